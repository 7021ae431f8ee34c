"""The Celery app and its settings: one queue per tier, JSON only, at-least-once.

Every process (dispatchers, workers on every machine, the reaper, Flower) builds
its app here from the same config, so the visibility timeout and the queue list
agree everywhere (the shortest visibility timeout among processes would win).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis
from celery import Celery
from celery.app.amqp import AMQP
from celery.utils.nodenames import anon_nodename
from celery.utils.time import utcoffset
from kombu import Queue

from . import connections, keys
from .config import FleetConfig, require_chosen_redis
from .envelope import Delivery
from .jobs import Result, Status
from .kombu_fixes import transport_for

TASK_NAME = "tierfleet.run_job"


def celery_settings(config: FleetConfig) -> dict[str, object]:
    rel = config.reliability
    vt = rel.visibility_timeout_s
    settings: dict[str, object] = {
        "broker_url": connections.celery_url(config.redis_url),
        "result_backend": connections.celery_url(config.results_url),
        "broker_transport_options": {
            "visibility_timeout": vt,
            # kombu >= 5.7: sweep for expired unacked messages every ~10 s, not ~100 s.
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
            "socket_keepalive": True,
            "socket_connect_timeout": 5,
            "health_check_interval": 25,
            "queue_order_strategy": "priority",
            "global_keyprefix": "",
        },
        "result_backend_transport_options": {"visibility_timeout": vt},
        "visibility_timeout": vt,
        "task_queues": [Queue(t, routing_key=t) for t in config.tiers],
        "task_default_queue": next(iter(config.tiers), "rules"),
        "task_create_missing_queues": False,
        # Pickle would let anyone who can write to Redis run code on every worker.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # At-least-once: ack after the task, requeue when a pool child dies.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        # True would terminate and then ack running jobs on a Redis restart: lost jobs.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_deduplicate_successful_tasks": False,  # our own store dedupes by job id
        "worker_soft_shutdown_timeout": 30.0,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "task_time_limit": rel.task_time_limit_s,
        "task_soft_time_limit": max(rel.task_time_limit_s - 60, rel.task_time_limit_s // 2),
        "task_track_started": True,
        "result_expires": rel.result_expires_s,
        # Off: the extended meta copies every job's kwargs (its words) into
        # celery-task-meta-*, an operator surface, and doubles Redis memory for big jobs.
        "result_extended": False,
        # Nobody reads Celery's result backend: producers read tierfleet's own result
        # store, and Flower its task events (which carry the summary). Not writing it
        # saves a SETEX and a PUBLISH per job and the celery-task-meta-* keys.
        "task_ignore_result": True,
        "result_backend_always_retry": True,
        "result_backend_max_retries": 10,
        # Flower needs task events from workers and task-sent events from producers.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 20,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 3.0,
        },
    }
    # kombu's Redis transports with the Redis-blink fix (see kombu_fixes): without it a
    # worker exits "Unrecoverable error: AttributeError(... 'hostname')" on a restart.
    transport = transport_for(config.redis_url)
    if transport:
        settings["broker_transport"] = transport
    # Sentinel: kombu (broker) and Celery (results) find the primary by this name and
    # ask the sentinels again after every connection error, i.e. after a failover.
    if connections.is_sentinel(config.redis_url):
        settings["broker_transport_options"] = {
            **settings["broker_transport_options"],  # type: ignore[dict-item]
            **connections.sentinel_transport_options(config)}
    if connections.is_sentinel(config.results_url):
        settings["result_backend_transport_options"] = {
            **settings["result_backend_transport_options"],  # type: ignore[dict-item]
            **connections.sentinel_transport_options(config)}
    return settings


class _ShadowNamedAMQP(AMQP):
    """Celery names a task by its ``shadow`` in the worker's events and logs, but its
    producer's ``task-sent`` event carries the registered name; Flower would list a
    queued job as ``tierfleet.run_job`` until a worker takes it. Name it the same."""

    def as_task_v2(self, task_id: str, name: str, *args: Any, **kwargs: Any) -> Any:
        message = super().as_task_v2(task_id, name, *args, **kwargs)
        shadow = message.headers.get("shadow")  # passed positionally by Celery: read it back
        if message.sent_event is not None and shadow:
            message.sent_event["name"] = shadow
        return message


class FleetCelery(Celery):
    """A Celery app that knows its fleet config (what operator views filter by)."""

    amqp_cls = f"{__name__}:_ShadowNamedAMQP"
    fleet_config: FleetConfig | None = None


def make_celery(config: FleetConfig) -> Celery:
    app = FleetCelery("tierfleet", set_as_current=False)
    app.conf.update(celery_settings(config))
    app.fleet_config = config
    return app


def send(app: Celery, delivery: Delivery, *, producer: Any = None) -> None:
    """The one way a delivery is published: JSON kwargs, task id = job id, queue = its tier.

    Flower shows a task's name and kwargs; it gets an operator's view instead of the
    job (:mod:`tierfleet.shown`): the name ``kind@trail>tier`` and the job's
    bookkeeping (id, kind, workflow, tier, trail), never its words.
    """
    from .shown import shown_kwargs, task_label

    kwargs = delivery.to_kwargs()
    config = getattr(app, "fleet_config", None)
    # Our own short repr: Celery's safe-repr of every message costs ~0.5 ms a publish.
    app.send_task(TASK_NAME, kwargs=kwargs, queue=delivery.tier, task_id=delivery.job.id,
                  producer=producer, argsrepr="()", kwargsrepr=shown_kwargs(delivery, config),
                  shadow=task_label(delivery))


def redis_client(config: FleetConfig, url: str | None = None, *,
                 decode_responses: bool = True) -> redis.Redis:
    """The fleet's store client (plain URL or Sentinel primary): see connections.py."""
    require_chosen_redis(config)
    return connections.redis_client(config, url, decode_responses=decode_responses)



# -- the door: admission and publish in one script, messages built here --------------------

# Celery's protocol-2 "embed" part for a task with no callbacks, errbacks, chain or chord,
# as kombu's JSON serialiser writes it (default separators).
_EMBED = ', {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'
_PENDING_ID = "TIERFLEETPENDINGID"


def _door_script() -> str:
    """store's admission script, verbatim, run as a function; its message goes out only
    when it says 'new'. One script: admission happens before the publish, atomically, and
    a job refused ('same', 'conflict') is never published."""
    # Imported late: store needs nothing from here, but keep the module graph a tree.
    from .store import _ADMIT  # the lead's admission rules, not a copy of them

    return ("local function admit()\n" + _ADMIT + "\nend\n"
            "local verdict = admit()\n"
            "if verdict == 'new' then\n"
            "  redis.call('LPUSH', KEYS[5], ARGV[7])\n"
            "  if ARGV[8] ~= '' then redis.call('PUBLISH', ARGV[9], ARGV[8]) end\n"
            "end\n"
            "return verdict\n")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Door:
    """Admits and publishes deliveries in one Redis round trip per batch.

    What kombu would send (the same JSON, byte for byte, but for the random delivery
    tag and the event's clock and time: ``tests/integration/test_door.py`` checks it and
    runs the messages on a stock Celery worker) is built here from templates cached at
    first use, then each delivery's admission (``store._ADMIT``) and its ``LPUSH`` (plus
    the ``task-sent`` event Flower reads) run as one script, pipelined over the batch.
    Celery's publish costs ~5 round trips a message (declare cache, result-backend
    SUBSCRIBE/UNSUBSCRIBE, LPUSH, PUBLISH) and ~200 µs of Python in kombu; this is one.

    Only for a Redis broker that is the store's Redis (the dispatcher checks), with no
    ``global_keyprefix``; anything else keeps the kombu path (``Door.usable``).
    """

    def __init__(self, app: Celery, client: redis.Redis, config: FleetConfig) -> None:
        self.app = app
        self.redis = client
        self.config = config
        self._lock = threading.Lock()
        self._ready_pid = -1
        self._sha = ""
        self._topic = ""
        self._pending: dict[str, str] = {}
        self._origin = ""
        conf = app.conf
        self._events = bool(conf.task_send_sent_event)
        self._retry = bool(conf.task_publish_retry)
        self._policy = dict(conf.task_publish_retry_policy or {})

    @staticmethod
    def usable(app: Celery) -> bool:
        url = str(app.conf.broker_url or "")
        opts = app.conf.broker_transport_options or {}
        return url.split("://", 1)[0] in {"redis", "rediss", "sentinel"} and not opts.get(
            "global_keyprefix")

    def _prepare(self) -> None:
        """Once per process: declare the queues as kombu's first publish would, and read
        the event topic from kombu itself (so a kombu option change is followed)."""
        with self._lock:
            if self._ready_pid == os.getpid():
                return
            with self.app.connection_for_write() as conn:
                ch = conn.default_channel
                for q in self.app.amqp.queues.values():
                    q.bind(ch).declare()
                topics = ch._get_publish_topics("celeryev", "task.sent")
            if len(topics) != 1:
                raise RuntimeError(f"kombu publishes task-sent events to {topics}: expected one")
            self._topic = topics[0]
            self._sha = self.redis.script_load(_door_script())
            self._origin = anon_nodename()
            self._ready_pid = os.getpid()

    def _pending_json(self, job_id: str, tier: str) -> str:
        """The 'pending' result admission writes: pydantic's JSON, from a template per tier."""
        tpl = self._pending.get(tier)
        if tpl is None:
            tpl = Result(job_id=_PENDING_ID, status=Status.PENDING, tier=tier).model_dump_json()
            self._pending[tier] = tpl
        if not job_id.isascii():  # pydantic writes non-ASCII raw, json.dumps escapes it
            return Result(job_id=job_id, status=Status.PENDING, tier=tier).model_dump_json()
        return tpl.replace(f'"{_PENDING_ID}"', json.dumps(job_id), 1)

    def encode(self, kwargs: dict[str, Any], body_json: str, tier: str, *,
               clock: int, now: float, offset: float, reply_to: str,
               shown: str | None = None, shadow: str | None = None) -> tuple[str, str]:
        """(task message, task-sent event) as kombu's Redis transport would LPUSH/PUBLISH them.

        Written from a template rather than ``json.dumps`` of the envelope (a third of the
        door's Python time): only ids, names and the repr vary, each escaped by the JSON
        encoder's own string escaper; the test checks the bytes against kombu's.
        """
        task_id = kwargs["job"]["id"]
        qid, qtier = _q(task_id), _q(tier)
        # What Flower shows: the operator's view (shown.py), the same as ``send`` gives it.
        qshown = _q(shown if shown is not None else repr(kwargs)[:1024])
        qshadow = _q(shadow) if shadow else "null"
        # Celery's task-sent event names the task by its shadow when it has one.
        qevname = _q(shadow) if shadow else '"' + TASK_NAME + '"'
        qorigin = _q(self._origin)
        message = (
            '{"body": "' + _b64("[[], " + body_json + _EMBED) + '", '
            '"content-encoding": "utf-8", "content-type": "application/json", '
            '"headers": {"lang": "py", "task": "' + TASK_NAME + '", "id": ' + qid + ', '
            '"shadow": ' + qshadow + ', "eta": null, "expires": null, "group": null, '
            '"group_index": null, '
            '"retries": 0, "timelimit": [null, null], "root_id": ' + qid + ', "parent_id": null, '
            '"argsrepr": "()", "kwargsrepr": ' + qshown + ', "origin": ' + qorigin + ', '
            '"ignore_result": null, "replaced_task_nesting": 0, "stamped_headers": null, '
            '"stamps": {}}, '
            '"properties": {"correlation_id": ' + qid + ', "reply_to": ' + _q(reply_to) + ', '
            '"argsrepr": "()", "kwargsrepr": ' + qshown + ', "delivery_mode": 2, '
            '"delivery_info": {"exchange": "", "routing_key": ' + qtier + '}, "priority": 0, '
            '"body_encoding": "base64", "delivery_tag": "' + _tag() + '"}}'
        )
        if not self._events:
            return message, ""
        body = (
            '{"hostname": ' + qorigin + ', "utcoffset": ' + repr(float(offset)) + ', '
            '"pid": ' + str(os.getpid()) + ', "clock": ' + str(clock) + ', "uuid": ' + qid + ', '
            '"root_id": ' + qid + ', "parent_id": null, "name": ' + qevname + ', '
            '"args": "()", "kwargs": ' + qshown + ', "retries": 0, "eta": null, '
            '"expires": null, "queue": ' + qtier + ', "exchange": "", "routing_key": ' + qtier + ', '
            '"timestamp": ' + repr(float(now)) + ', "type": "task-sent"}'
        )
        event = (
            '{"body": "' + _b64(body) + '", "content-encoding": "utf-8", '
            '"content-type": "application/json", "headers": {"hostname": ' + qorigin + '}, '
            '"properties": {"delivery_mode": 1, "delivery_info": {"exchange": "celeryev", '
            '"routing_key": "task.sent"}, "priority": 0, "body_encoding": "base64", '
            '"delivery_tag": "' + _tag() + '"}}'
        )
        return message, event

    def commands(self, deliveries: Sequence[Delivery]) -> list[tuple[Any, ...]]:
        """The EVALSHA of each delivery (admission + publish), in order."""
        from .shown import shown_kwargs, task_label

        self._prepare()
        cfg = self.config
        ttl = cfg.reliability.result_expires_s
        index, bodies = keys.open_index(cfg), keys.open_bodies(cfg)
        now = time.time()
        offset = utcoffset()
        reply_to = self.app.thread_oid
        clock = self.app.clock
        out: list[tuple[Any, ...]] = []
        for d in deliveries:
            kwargs = d.to_kwargs()
            job = kwargs["job"]
            jid = job["id"]
            body_json = json.dumps(kwargs)  # the kept copy and the task body: the same text
            message, event = self.encode(kwargs, body_json, d.tier, clock=clock.forward(),
                                         now=now, offset=offset, reply_to=reply_to,
                                         shown=shown_kwargs(d, cfg), shadow=task_label(d))
            out.append(("EVALSHA", self._sha, 5, keys.result(cfg, jid), keys.digest(cfg, jid),
                        index, bodies, d.tier, jid, job_digest(job),
                        self._pending_json(jid, d.tier), body_json, ttl, now, message, event,
                        self._topic))
        return out

    def admit(self, deliveries: Sequence[Delivery]) -> list[str]:
        """Admit and publish each delivery: its verdict 'new' (published), 'same' or 'conflict'.

        Safe to send again after a lost reply: a delivery already admitted answers 'same'
        and is not published twice.
        """
        if not deliveries:
            return []
        cmds = self.commands(deliveries)
        tries = 0
        while True:
            try:
                return self._run(cmds)
            except redis.exceptions.NoScriptError:
                # Redis restarted (or SCRIPT FLUSH): load again; nothing of the batch ran.
                self._sha = self.redis.script_load(_door_script())
                cmds = [(c[0], self._sha, *c[2:]) for c in cmds]
            except (redis.ConnectionError, redis.TimeoutError):
                # kombu's task_publish_retry_policy, kept: the same waits, the same count.
                tries += 1
                if not self._retry or tries > int(self._policy.get("max_retries") or 3):
                    raise
                wait = min(float(self._policy.get("interval_start", 0))
                           + (tries - 1) * float(self._policy.get("interval_step", 0.2)),
                           float(self._policy.get("interval_max", 1)))
                time.sleep(wait)

    def _run(self, cmds: list[tuple[Any, ...]]) -> list[str]:
        return [x.decode() if isinstance(x, bytes) else str(x) for x in send_raw(self.redis, cmds)]


def send_raw(client: redis.Redis, cmds: list[tuple[Any, ...]]) -> list[Any]:
    """A pipeline (no MULTI) packed here, replies as Redis sent them (the first error
    reply raised once all are read). redis-py's packer re-copies its buffer per argument:
    ~90 µs a job for the door's few-KB arguments, ~0.7 ms for the finishing script's ~200
    small ones on a busy box; one join of the whole batch costs a few µs."""
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([_resp(cmds)], check_health=True)
        out: list[Any] = []
        error: redis.ResponseError | None = None
        for _ in cmds:  # read every reply, so the connection goes back clean
            try:
                out.append(conn.read_response())
            except redis.ResponseError as exc:
                error = error or exc
                out.append(None)
    except (redis.ConnectionError, redis.TimeoutError):
        conn.disconnect()
        raise
    finally:
        pool.release(conn)
    if error is not None:
        raise error
    return out


def _resp(cmds: list[tuple[Any, ...]]) -> bytes:
    """Commands in the Redis protocol (RESP2 arrays of bulk strings), as redis-py encodes
    arguments: str as UTF-8, int with str(), float with repr()."""
    parts: list[bytes] = []
    for c in cmds:
        parts.append(b"*%d\r\n" % len(c))
        for a in c:
            b = a if isinstance(a, bytes) else (repr(a) if isinstance(a, float) else str(a)).encode()
            parts.append(b"$%d\r\n" % len(b))
            parts.append(b)
            parts.append(b"\r\n")
    return b"".join(parts)


def job_digest(job: dict[str, Any]) -> str:
    """``OpenJobs.digest`` of a job already dumped to JSON types (every field but the id)."""
    body = {k: v for k, v in job.items() if k != "id"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# The JSON encoder's own string escaper (C): what json.dumps writes for a str, ensure_ascii on.
_q = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def _tag() -> str:
    """kombu's delivery tag: a random version-4 UUID (``str(uuid.uuid4())``), written
    without building a UUID object (a fifth of the cost)."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
