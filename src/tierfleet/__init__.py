"""tierfleet: send every AI job to the cheapest place that can do it well, and never lose it.

    import tierfleet
    handle = tierfleet.submit({"kind": "summary", "prompt": "...", "workflow": "inbox"})
    result = tierfleet.result(handle.id, timeout=60)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .config import FleetConfig, get_config, load_config
from .errors import ConfigError, JobRejected, NoRoute, ResultTimeout, TierfleetError
from .jobs import Job, Kind, Privacy, Result, Risk, Route, Status

__all__ = [
    "ConfigError",
    "FleetConfig",
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
    "get_config",
    "load_config",
    "report",
    "result",
    "submit",
    "submit_many",
]


def submit(job: Job | Mapping[str, Any] | None = None, **fields: Any) -> Any:
    """Validate, route and enqueue one job; returns a Handle (id and route)."""
    from .dispatch import default_dispatcher

    return default_dispatcher().submit(job if job is not None else fields)


def submit_many(jobs: Iterable[Job | Mapping[str, Any]]) -> list[Any]:
    from .dispatch import default_dispatcher

    return default_dispatcher().submit_many(jobs)


def result(job_id: str, timeout: float | None = None) -> Result:
    from .dispatch import default_dispatcher

    return default_dispatcher().result(job_id, timeout)


def report(since: str = "30d", by: str = "workflow", **kwargs: Any) -> Any:
    """Spend, tokens, latency and savings against the always-paid baseline, as data."""
    from .reports.spend import report as _report

    return _report(since=since, by=by, **kwargs)
