"""The Celery app and its settings: one queue per tier, JSON only, at-least-once.

Every process (dispatchers, workers on every machine, the reaper, Flower) builds
its app here from the same config, so the visibility timeout and the queue list
agree everywhere (the shortest visibility timeout among processes would win).
"""

from __future__ import annotations

from typing import Any

import redis
from celery import Celery
from celery.app.amqp import AMQP
from kombu import Queue

from . import connections
from .config import FleetConfig, require_chosen_redis
from .envelope import Delivery
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


def redis_client(config: FleetConfig, url: str | None = None) -> redis.Redis:
    """The fleet's store client (plain URL or Sentinel primary): see connections.py."""
    require_chosen_redis(config)
    return connections.redis_client(config, url)

