"""The Celery app workers run: ``celery -A tierfleet.worker worker -Q local-gpu``.

One task, ``tierfleet.run_job``, carries a :class:`~tierfleet.envelope.Delivery`
(a job, its route, the trail of tiers already tried, the attempt count) as JSON
kwargs (readable in Flower; never secrets). What a delivery does is in
:mod:`tierfleet.runner`; this module is the only one that knows Celery: it turns
the runner's outcomes into task results (or ``Ignore`` for a moved job) and keeps
the worker's heartbeat and the reaper thread running.

Importing it reads the config and builds the Celery app (``celery -A`` needs a
module-level app); code that only needs heartbeats imports :mod:`tierfleet.heartbeats`.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from datetime import UTC, datetime
from typing import Any

from celery import bootsteps
from celery.app import trace as celery_trace
from celery.exceptions import Ignore, Retry
from celery.signals import celeryd_init, worker_init, worker_process_init
from celery.signals import setup_logging as celery_setup_logging
from celery.utils.nodenames import default_nodename, gethostname
from celery.worker import state as worker_state

from . import tokens
from .broker import TASK_NAME, make_celery, redis_client, send
from .config import get_config, require_chosen_redis
from .envelope import Delivery
from .heartbeats import Watchdog, write_heartbeat
from .ledger import LedgerExport
from .logs import json_wanted, setup_celery_logging, setup_logging
from .preflight import host_problems
from .reaper import Reaper
from .runner import REDIS_BLINKS, Duplicate, Moved, Parked, Runner
from .shown import JobNotSucceeded, crash_error, is_confidential, not_succeeded, task_summary

log = logging.getLogger("tierfleet.worker")

config = get_config()
require_chosen_redis(config)  # a worker with no config at all must not guess at a Redis
app = make_celery(config)

_runner: Runner | None = None


def runner() -> Runner:
    """One Runner per process, built after fork so no Redis socket is shared."""
    global _runner
    if _runner is None or _runner_pid != os.getpid():
        _set_runner(Runner(config, redis_client(config), publish))
    assert _runner is not None
    return _runner


_runner_pid = -1


def _set_runner(r: Runner) -> None:
    global _runner, _runner_pid
    _runner, _runner_pid = r, os.getpid()


def publish(delivery: Delivery) -> None:
    send(app, delivery)


# ``throws``: a job that did not succeed is an expected outcome, logged by Celery on one
# INFO line without a traceback, not an error of the worker.
@app.task(name=TASK_NAME, bind=True, throws=(JobNotSucceeded,))
def run_job(
    self: Any,
    job: dict[str, Any],
    route: dict[str, Any],
    trail: list[str] | None = None,
    attempt: int = 1,
    parks: int = 0,
    escalated: bool = False,
    origin: dict[str, Any] | None = None,
) -> dict[str, Any]:
    kwargs = {"job": job, "route": route, "trail": trail, "attempt": attempt, "parks": parks,
              "escalated": escalated, "origin": origin}
    owner = f"{self.request.hostname or 'worker'}|{os.getpid()}|{threading.get_ident()}"
    delay = 0.5
    give_up = time.monotonic() + config.reliability.task_time_limit_s / 2
    while True:
        try:
            outcome = runner().run(Delivery.from_kwargs(kwargs), owner=owner)
        except REDIS_BLINKS as exc:
            # Redis blinked mid-job (restart, failover). Failing here would ack the message
            # and lose the job; a Celery retry would need Redis to publish. Instead hold the
            # delivery and run again once Redis answers: the run is idempotent by job id.
            if time.monotonic() > give_up:
                raise
            log.warning("job %s: redis unavailable (%s); retrying in %.1fs", job.get("id"), exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        except Exception as exc:
            _log_crash(job, exc)
            runner().crashed(kwargs, exc)
            if is_confidential(job):
                raise crash_error(job, exc) from None  # Celery logs and stores it: no job text
            raise
        if isinstance(outcome, Moved):
            # The job lives on in the delivery just published; this one is acked, no result.
            raise Ignore(f"moved to {outcome.to}")
        if isinstance(outcome, Duplicate):
            # Another live delivery of this job is calling a host right now; it will finish
            # the job (or its own message comes back if its worker dies). Ack this copy.
            raise Ignore(f"duplicate delivery: {outcome.why}")
        return _task_outcome(job, outcome)


def _log_crash(job: dict[str, Any], exc: Exception) -> None:
    if is_confidential(job):
        # A traceback's last line quotes the exception, which may quote the job's words.
        log.error("job %s crashed the runner: %s", job.get("id"), crash_error(job, exc))
    else:
        log.exception("job %s crashed the runner", job.get("id"))


def _task_outcome(job: dict[str, Any], outcome: Any) -> dict[str, Any]:
    """The task's return value, or the exception that gives Celery the job's real state.

    Returns a summary, never the answer: the return value is what Flower's Result
    column, ``celery-task-meta-*`` and Celery's "Task succeeded" log line show; the
    producer reads the full result from the result store. A job that failed or is dead
    raises (FAILURE; ``task_acks_on_failure_or_timeout`` still acks the message); a
    parked job raises :class:`~celery.exceptions.Retry` without publishing anything
    (RETRY, acked: the reaper republishes it from the parked set when it is due).
    """
    result = outcome.result
    if result.ok:
        return task_summary(result, job)
    error = not_succeeded(result, job)
    if isinstance(outcome, Parked):
        raise Retry(str(error), exc=error, when=datetime.fromtimestamp(outcome.due, tz=UTC))
    raise error


def _queues_of(options: dict[str, Any]) -> list[str]:
    raw = options.get("queues") or []
    names = raw.split(",") if isinstance(raw, str) else list(raw)
    return [q.strip() for q in names if q and q.strip()]


def node_name(tiers: list[str], host: str | None = None) -> str:
    """``TIER@host`` (``a+b@host`` for a node serving several tiers): one heartbeat key per
    tier set and machine, whichever way the worker was started."""
    return f"{'+'.join(tiers)}@{host or gethostname()}"


@celeryd_init.connect
def _tier_defaults(instance: Any = None, conf: Any = None, options: dict[str, Any] | None = None,
                   **_: Any) -> None:
    """The bare command (``celery -A tierfleet.worker worker -Q local-gpu``) behaves like
    ``tierfleet worker -t local-gpu``: the tier's concurrency and the node name TIER@host.

    Celery sends this signal from ``Worker.on_before_init``: after the node name is set
    from ``-n`` (``celery@host`` when none was given) and before ``setup_defaults`` reads
    ``worker_concurrency`` for a ``-c`` that was not given (``options["concurrency"]`` is
    then None). So: fill ``worker_concurrency`` only when ``-c`` was not given, and
    rename the node only when it still has Celery's default name.
    """
    options = options or {}
    tiers = [t for t in _queues_of(options) if t in config.tiers]
    if not tiers or len(tiers) != len(_queues_of(options)):
        return  # no -Q, or a queue that is not a tier: Celery's own defaults, as asked
    if options.get("concurrency") is None and conf is not None:
        conf.worker_concurrency = max(config.tiers[t].concurrency for t in tiers)
    if instance is not None and instance.hostname == default_nodename(None):
        instance.hostname = node_name(tiers)
        # Celery cached the old name for task requests just before this signal.
        celery_trace.setup_worker_optimizations(instance.app, instance.hostname)


@worker_init.connect
def _preflight(sender: Any = None, **_: Any) -> None:
    """Refuse to consume when a host of this worker's tiers lacks what it needs (its API
    key, say): failing here is local and loud, where failing per job tripped the host's
    shared breaker and billed the jobs on the paid tier."""
    selected = getattr(getattr(getattr(sender, "app", None), "amqp", None), "queues", None)
    consumed = getattr(selected, "consume_from", None)
    tiers = [t for t in (consumed or config.tiers) if t in config.tiers]
    problems = host_problems(config, tiers)
    if problems:
        log.error("worker refuses to start: %s", "; ".join(problems))
        # SystemExit passes through Celery's signal dispatch (it catches Exception only).
        raise SystemExit(78)  # EX_CONFIG


@worker_init.connect
def _preload(**_: Any) -> None:
    # Load the tokenizer once before the pool forks, so no job (a first fallback, say)
    # waits ~0.5 s for it.
    tokens.encoding()


@worker_process_init.connect
def _fresh_runner(**_: Any) -> None:
    global _runner
    _runner = None


def _held() -> tuple[list[str], list[str]]:
    """The delivery tags this node's requests hold, and their job ids (task id = job id):
    a request is reserved from its receipt and active while it runs, until it is done."""
    tags: list[str] = []
    jobs: list[str] = []
    for reqs in (worker_state.active_requests, worker_state.reserved_requests):
        for _ in range(3):  # the sets change under us while tasks start and finish
            try:
                snapshot = list(reqs)
                break
            except RuntimeError:
                continue
        else:
            snapshot = []
        for req in snapshot:
            tag = getattr(getattr(req, "message", None), "delivery_tag", None)
            if tag:
                tags.append(str(tag))
            if getattr(req, "id", None):
                jobs.append(str(req.id))
    return tags, jobs


class Heartbeat(bootsteps.StartStopStep):
    """Tells the fleet this node is alive and which deliveries it holds; runs the reaper.

    A thread, not the consumer's timer: with the solo pool a long job blocks the
    event loop, and a silent heartbeat would let the reaper re-run a live job.
    """

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, parent: Any) -> None:
        self._stop.clear()
        node = parent.hostname
        queues = [q.name for q in parent.task_consumer.queues] if parent.task_consumer else []
        concurrency = getattr(parent.controller, "concurrency", 1) or 1
        client = redis_client(config)
        qos_tags = _qos_tags_reader(parent)

        watchdog = Watchdog(config.reliability.stall_restart_s)

        def beat() -> None:
            while not self._stop.is_set():
                try:
                    tags, jobs = _held()
                    held = tags + qos_tags()
                    write_heartbeat(client, config, node, queues, held, concurrency,
                                    pids=_pool_pids(parent.controller), jobs=jobs)
                    waiting = sum(int(client.llen(q)) for q in queues)
                    done = sum(worker_state.total_count.values())
                    if watchdog.stalled(waiting, len(held), done):
                        log.error("node %s holds no job while %d wait on %s for %.0f s: it has "
                                  "stopped consuming; shutting down warm to be restarted",
                                  node, waiting, ",".join(queues), watchdog.limit_s)
                        os.kill(os.getpid(), signal.SIGTERM)
                        return
                except Exception as exc:
                    log.warning("heartbeat failed: %s", exc)
                self._stop.wait(config.reliability.heartbeat_s)

        reaper = Reaper(config, redis_client(config), app)
        export = LedgerExport(redis_client(config), config)
        self._threads = [
            threading.Thread(target=beat, name="tierfleet-heartbeat", daemon=True),
            threading.Thread(target=reaper.run_forever, args=(self._stop,),
                             name="tierfleet-reaper", daemon=True),
            # Its own thread: a hung ledger disk stalls the JSONL copy, never a job or a sweep.
            threading.Thread(target=export.run_forever, args=(self._stop,),
                             name="tierfleet-ledger-export", daemon=True),
        ]
        if config.ledger.url:
            # Imported here: SQLAlchemy loads only on workers that write the ledger to SQL.
            from .ledger_sql import SqlLedgerWriter

            sql = SqlLedgerWriter(redis_client(config), config)
            self._threads.append(threading.Thread(target=sql.run_forever, args=(self._stop,),
                                                  name="tierfleet-ledger-sql", daemon=True))
        for t in self._threads:
            t.start()

    def stop(self, parent: Any) -> None:
        self._stop.set()

    def shutdown(self, parent: Any) -> None:
        self._stop.set()


def _pool_pids(controller: Any) -> list[int]:
    """The pool's live processes (prefork children; the main process for threads/solo)."""
    pids = [os.getpid()]
    inner = getattr(getattr(controller, "pool", None), "_pool", None)
    for proc in list(getattr(inner, "_pool", None) or []):
        pid = getattr(proc, "pid", None)
        if pid:
            pids.append(int(pid))
    return pids


def _qos_tags_reader(parent: Any) -> Any:
    """Tags kombu has delivered to this node but Celery has not yet made requests of."""

    def read() -> list[str]:
        try:
            qos = parent.task_consumer.channel.qos
            return [str(t) for t in list(qos._delivered.keys())]
        except Exception:
            return []

    return read


app.steps["consumer"].add(Heartbeat)
setup_logging()

if json_wanted():
    # Connected, this signal stops Celery installing its text handlers: its own lines
    # ("Task ... succeeded", connection errors) go through the JSON root handler.
    @celery_setup_logging.connect
    def _json_celery_logs(loglevel: Any = None, **_: Any) -> None:
        setup_celery_logging(loglevel)
