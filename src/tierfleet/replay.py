"""Send dead letters back to their first tier with a fresh retry budget."""

from __future__ import annotations

from typing import Any

from . import keys
from .broker import make_celery, redis_client, send
from .config import FleetConfig
from .envelope import Delivery
from .errors import TierfleetError
from .jobs import Result, Status
from .store import OpenJobs, Parking, ResultStore

REPLAY_CLAIM_S = 60


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
        # Two replays of one id at once would both clear the result and publish: one
        # claim per id, which expires, so a replay that died holding it is retried later.
        claim = keys.replay_claim(config, jid)
        if not client.set(claim, "1", nx=True, ex=REPLAY_CLAIM_S):
            continue
        try:
            dead = parking.dead_delivery(jid)  # read under the claim: gone if one just finished
            if dead is None:
                continue
            _resend(dead.replayed(), jid, results, open_jobs, app, parking)
            n += 1
        finally:
            client.delete(claim)
    return n


def _resend(delivery: Delivery, jid: str, results: ResultStore, open_jobs: OpenJobs,
            app: Any, parking: Parking) -> None:
    results.forget(jid)
    results.save(Result(job_id=jid, status=Status.PENDING, tier=delivery.tier))
    open_jobs.update(delivery)
    send(app, delivery)
    parking.take_dead(jid)


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
