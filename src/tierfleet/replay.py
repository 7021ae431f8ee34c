"""Send dead letters back to their first tier with a fresh retry budget."""

from __future__ import annotations

from .broker import make_celery, redis_client, send
from .config import FleetConfig
from .errors import TierfleetError
from .jobs import Result, Status
from .store import OpenJobs, Parking, ResultStore


def replay(config: FleetConfig, job_id: str | None = None) -> int:
    """Re-send one dead letter (or all); returns how many were sent."""
    client = redis_client(config)
    parking = Parking(client, config)
    results = ResultStore(client, config)
    app = make_celery(config)
    ids = [resolve_dead_id(parking, job_id)] if job_id else [d["id"] for d in parking.dead()]
    n = 0
    open_jobs = OpenJobs(client, config)
    for jid in ids:
        dead = parking.dead_delivery(jid)
        if dead is None:
            continue
        delivery = dead.replayed()
        # Open first (with the delivery kept), then publish, then drop the dead letter: a
        # crash at any point leaves the job a dead letter or open and repairable, never gone.
        # The stored DEAD result is terminal; replace it so the new run's answer is kept.
        results.forget(jid)
        results.save(Result(job_id=jid, status=Status.PENDING, tier=delivery.tier))
        open_jobs.update(delivery)
        send(app, delivery)
        parking.take_dead(jid)
        n += 1
    return n


def resolve_dead_id(parking: Parking, given: str) -> str:
    """A dead letter's full id from the id or a unique prefix of it (``dlq list`` ids are
    long; a table may have been cut by a narrow terminal). An ambiguous prefix is an
    error naming how many it matches; no match returns ``given`` (nothing to replay)."""
    ids = [d["id"] for d in parking.dead()]
    if given in ids:
        return given
    matches = [i for i in ids if i.startswith(given)]
    if len(matches) > 1:
        raise TierfleetError(f"id prefix {given!r} matches {len(matches)} dead letters: "
                          "give more of the id")
    return matches[0] if matches else given
