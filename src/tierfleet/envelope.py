"""The one body that travels on a tier's queue: a :class:`Delivery`.

A delivery is the job, the route it was sent on, and what happened to it
before this queue: the tiers already tried (``trail``), the attempt number the
ledger bills under, how often it has been parked, and whether it has used its
one escalation. The producer, the worker, the reaper and ``dlq replay`` all
build and read it here, so the shape exists once.

On the wire it is the keyword arguments of the Celery task ``tierfleet.run_job``
(:meth:`Delivery.to_kwargs`), with the same names as before this module
existed, so workers and producers of either version understand each other.
Parked and dead-letter entries store ``{"delivery": <kwargs>, "reason": ...,
"parked_at"/"dead_at": ...}``: the delivery untouched, the bookkeeping beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from .jobs import Job, Reason, Route

__all__ = ["Delivery"]


class Delivery(BaseModel):
    """One message on a tier's queue: the job, where it was sent, and what happened to it before."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job: Job
    route: Route
    trail: tuple[str, ...] = ()  # tiers already tried, oldest first
    attempt: int = 1  # the ledger bills (job id, attempt) once
    parks: int = 0  # times parked so far; dead letter after reliability.max_attempts
    escalated: bool = False  # one escalation per job
    # The route the dispatcher chose: a parked job re-enters the fleet on it, with its own
    # privacy-filtered chain, wherever it was when it parked.
    origin: Route | None = None

    @property
    def tier(self) -> str:
        return self.route.tier

    def to_kwargs(self) -> dict[str, Any]:
        """The task kwargs ``broker.send`` publishes (JSON only: Flower shows them)."""
        body: dict[str, Any] = {
            "job": self.job.model_dump(mode="json"),
            "route": self.route.model_dump(mode="json"),
            "trail": list(self.trail),
            "attempt": self.attempt,
            "parks": self.parks,
        }
        # Sent only when set, as before: the body of an ordinary job stays as it always was.
        if self.escalated:
            body["escalated"] = True
        if self.origin is not None and self.origin != self.route:
            body["origin"] = self.origin.model_dump(mode="json")
        return body

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> Delivery:
        """Read task kwargs; ``None`` for an optional field means its default (older senders)."""
        return cls(
            job=kwargs["job"],
            route=kwargs["route"],
            trail=tuple(kwargs.get("trail") or ()),
            attempt=int(kwargs.get("attempt") or 1),
            parks=int(kwargs.get("parks") or 0),
            escalated=bool(kwargs.get("escalated")),
            origin=kwargs.get("origin"),
        )

    @property
    def first_route(self) -> Route:
        """The dispatcher's route: ``origin`` once the job has moved, else its route."""
        return self.origin if self.origin is not None else self.route

    def moved(self, route: Route, *, escalated: bool = False) -> Delivery:
        """The next delivery after this tier handed the job on to ``route.tier``."""
        return self.model_copy(update={
            "route": route,
            "trail": (*self.trail, self.route.tier),
            "attempt": self.attempt + 1,
            "escalated": self.escalated or escalated,
            "origin": self.first_route,
        })

    def restarted(self, why: str) -> Delivery:
        """The delivery a parked job re-enters with: the dispatcher's route (its first tier
        and its own privacy-filtered chain), an empty trail, one more park.

        The escalation flag is kept: one escalation per job, parked or not.
        """
        first = self.first_route
        route = first.model_copy(update={
            "host": None,
            "reasons": [*first.reasons, Reason(stage="worker", text=f"parked: {why}")],
        })
        return Delivery(job=self.job, route=route, trail=(), attempt=self.attempt + 1,
                        parks=self.parks + 1, escalated=self.escalated)

    def repaired(self) -> Delivery:
        """Sent again by the repair sweep: the same delivery (its message was lost)."""
        return self

    def replayed(self) -> Delivery:
        """A dead letter sent again: same job and route, a fresh retry budget.

        The attempt number goes on from where it stopped, so the replayed run's ledger
        records never share a key with the first run's.
        """
        return Delivery(job=self.job, route=self.route, attempt=self.attempt + 1,
                        origin=self.origin)
