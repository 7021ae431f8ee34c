"""A stock Celery app with no tierfleet code in its task: ``celery -A tests.support.stock_celery``.

It declares the one task name tierfleet publishes and stores what it was called with
under ``stock:got:{task id}``, so a test can check that a message tierfleet built
itself (``broker.Door``) is read and run by an ordinary Celery worker.
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery import Celery

BROKER = os.environ.get("STOCK_BROKER_URL", "redis://127.0.0.1:6379/0")
app = Celery("stock", broker=BROKER, set_as_current=False)
app.conf.update(task_serializer="json", accept_content=["json"], worker_hijack_root_logger=False,
                task_acks_late=True, worker_prefetch_multiplier=1)


@app.task(name="tierfleet.run_job", bind=True)
def run_job(self: Any, **kwargs: Any) -> None:
    with redis.Redis.from_url(BROKER) as r:
        r.set(f"stock:got:{self.request.id}", json.dumps(
            {"kwargs": kwargs, "argsrepr": self.request.argsrepr,
             "kwargsrepr": self.request.kwargsrepr, "origin": self.request.origin}), ex=600)
