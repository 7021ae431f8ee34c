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
from typing import Any

import redis
from celery import bootsteps
from celery.exceptions import Ignore
from celery.signals import worker_init, worker_process_init
from celery.worker import state as worker_state

from . import tokens
from .broker import TASK_NAME, make_celery, redis_client, send
from .config import get_config
from .envelope import Delivery
from .heartbeats import Watchdog, write_heartbeat
from .ledger import LedgerExport
from .logs import setup_logging
from .preflight import host_problems
from .reaper import Reaper
from .runner import Duplicate, Moved, Runner

log = logging.getLogger("tierfleet.worker")

config = get_config()
app = make_celery(config)

_runner: Runner | None = None
# Errors that mean "Redis is not answering right now", as opposed to a bug in a command.
REDIS_BLINKS = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError)


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


@app.task(name=TASK_NAME, bind=True)
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
            log.exception("job %s crashed the runner", job.get("id"))
            runner().crashed(kwargs, exc)
            raise
        if isinstance(outcome, Moved):
            # The job lives on in the delivery just published; this one is acked, no result.
            raise Ignore(f"moved to {outcome.to}: {outcome.why}")
        if isinstance(outcome, Duplicate):
            # Another live delivery of this job is calling a host right now; it will finish
            # the job (or its own message comes back if its worker dies). Ack this copy.
            raise Ignore(f"duplicate delivery: {outcome.why}")
        return outcome.result.model_dump(mode="json")


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


def _held_tags() -> list[str]:
    tags: list[str] = []
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
    return tags


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
                    held = _held_tags() + qos_tags()
                    write_heartbeat(client, config, node, queues, held, concurrency,
                                    pids=_pool_pids(parent.controller))
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
