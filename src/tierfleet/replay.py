"""Send dead letters back to their first tier with a fresh retry budget."""

from __future__ import annotations

from .broker import make_celery, redis_client, send
from .config import FleetConfig
from .jobs import Result, Status
from .store import Parking, ResultStore


def replay(config: FleetConfig, job_id: str | None = None) -> int:
    """Re-send one dead letter (or all); returns how many were sent."""
    client = redis_client(config)
    parking = Parking(client, config)
    results = ResultStore(client, config)
    app = make_celery(config)
    ids = [job_id] if job_id else [d["id"] for d in parking.dead()]
    n = 0
    for jid in ids:
        dead = parking.take_dead(jid)
        if dead is None:
            continue
        delivery = dead.replayed()
        # The stored DEAD result is terminal; replace it so the new run's answer is kept.
        results.forget(jid)
        results.save(Result(job_id=jid, status=Status.PENDING, tier=delivery.tier))
        send(app, delivery)
        n += 1
    return n
