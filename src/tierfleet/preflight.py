"""What a worker checks before it consumes: every host of its tiers has what it needs.

A worker missing its host's API key used to start, fail each job's health probe,
trip the host's *shared* breaker (so correctly configured workers stopped using the
host too) and move its jobs to the paid tier. Now it refuses to start with one error
line naming the host and the variable; the process manager shows it as failed.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from .backends._http import SECRETS_DIR_ENV, load_api_key
from .config import FleetConfig

__all__ = ["host_problems"]


def host_problems(config: FleetConfig, tiers: Iterable[str]) -> list[str]:
    """One line per host of ``tiers`` this machine cannot use: a missing secret, a bad URL."""
    problems: list[str] = []
    for tier in tiers:
        for name, host in config.hosts_for(tier).items():
            if host.api_key_env and load_api_key(host.api_key_env) is None:
                problems.append(
                    f"host {name} (tier {tier}) needs an API key: set the environment variable "
                    f"{host.api_key_env} (or the file ${SECRETS_DIR_ENV}/{host.api_key_env})")
            url = urlsplit(host.url)
            if url.scheme not in ("http", "https") or not url.hostname:
                problems.append(f"host {name} (tier {tier}): url {host.url!r} is not an http(s) URL")
    return problems
