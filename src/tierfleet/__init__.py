"""tierfleet: send every AI job to the cheapest place that can do it well, and never lose it.

    import tierfleet
    handle = tierfleet.submit({"kind": "summary", "prompt": "...", "workflow": "inbox"})
    result = tierfleet.result(handle.id, timeout=60)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .config import FleetConfig, get_config, load_config
from .errors import ConfigError, JobRejected, NoRoute, ResultTimeout, TierfleetError
from .jobs import Job, Kind, Privacy, Result, Risk, Route, Status, UserTier

if TYPE_CHECKING:
    # Imported for the signatures only: the dispatcher loads Celery and the report loads
    # the ledger, and ``import tierfleet`` stays cheap until a job is submitted.
    from .dispatch import Handle
    from .reports.spend import GroupBy, Report

__all__ = [
    "ConfigError",
    "FleetConfig",
    "Handle",
    "Job",
    "JobRejected",
    "Kind",
    "NoRoute",
    "Privacy",
    "Result",
    "ResultTimeout",
    "Risk",
    "Route",
    "Status",
    "TierfleetError",
    "UserTier",
    "get_config",
    "load_config",
    "report",
    "result",
    "submit",
    "submit_many",
]


def submit(job: Job | Mapping[str, Any] | None = None, **fields: Any) -> Handle:
    """Validate, route and enqueue one job; returns its Handle (id and route)."""
    from .dispatch import default_dispatcher

    return default_dispatcher().submit(job if job is not None else fields)


def submit_many(jobs: Iterable[Job | Mapping[str, Any]]) -> list[Handle]:
    """Validate and route every job, then enqueue them all; one bad job enqueues none."""
    from .dispatch import default_dispatcher

    return default_dispatcher().submit_many(jobs)


def result(job_id: str, timeout: float | None = None) -> Result:
    """A job's final result; ``timeout`` None looks once (pending if not final), otherwise
    waits up to ``timeout`` seconds and raises ResultTimeout."""
    from .dispatch import default_dispatcher

    return default_dispatcher().result(job_id, timeout)


def report(since: str = "30d", by: GroupBy = "workflow", **kwargs: Any) -> Report:
    """Spend, tokens, latency and savings against the always-paid baseline, as data."""
    from .reports.spend import report as _report

    return _report(since=since, by=by, **kwargs)


def __getattr__(name: str) -> Any:
    # Handle lives with the dispatcher, which is loaded on first use (see above).
    if name == "Handle":
        from .dispatch import Handle

        return Handle
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
