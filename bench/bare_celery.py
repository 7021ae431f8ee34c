"""The baseline: a bare Celery app with tierfleet's broker settings and one no-op task.

    TIERFLEET_CONFIG=fleet.toml PYTHONPATH=bench celery -A bare_celery worker -Q bare -c 2

The settings come from :func:`tierfleet.broker.celery_settings` (JSON only,
acks_late, prefetch 1, the same transport options, events and result backend),
so the only difference from a tierfleet worker is what a task does: here,
nothing. The ratio against it is tierfleet's own cost per job.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import Celery
from celery.signals import worker_ready
from kombu import Queue

from tierfleet.broker import celery_settings
from tierfleet.config import FleetConfig, get_config

QUEUE = "bare"
NOOP = "bench.noop"


def ready_key(config: FleetConfig, node: str) -> str:
    return f"{config.key_prefix}:bare-ready:{node}"


def make_app(config: FleetConfig) -> Celery:
    app = Celery("bench-bare", set_as_current=False)
    app.conf.update(celery_settings(config))
    app.conf.update(task_queues=[Queue(QUEUE, routing_key=QUEUE)], task_default_queue=QUEUE)

    @app.task(name=NOOP, shared=False)
    def noop(**kwargs: Any) -> None:
        return None

    return app


_app: Celery | None = None


def __getattr__(name: str) -> Any:
    # Built on first use, so importing this module in the benchmark reads no config.
    global _app
    if name == "app":
        if _app is None:
            _app = make_app(get_config())
        return _app
    raise AttributeError(name)


@worker_ready.connect
def _announce(sender: Any = None, **_: Any) -> None:
    config = get_config()
    node = getattr(sender, "hostname", "?")
    with redis.Redis.from_url(config.redis_url) as client:
        client.set(ready_key(config, node), "1", ex=3600)
