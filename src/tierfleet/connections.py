"""Every Redis client the fleet opens, plain or through Sentinel, from one URL shape.

``redis://[:PASSWORD@]host:port/DB`` is one server. ``sentinel://[:PASSWORD@]h1:26379;
sentinel://h2:26379;sentinel://h3:26379/DB`` lists the sentinels (any order, one is
enough to answer) with the database once at the end, plus ``[redis] sentinel_master``
naming the primary the sentinels monitor. Clients made here ask the sentinels for the
current primary on every (re)connect, so a failover needs no restart.

Celery and kombu each parse ``sentinel://`` URLs themselves, but read the database
(and the password) from the first chunk only; :func:`celery_url` therefore repeats them
on every chunk, so both agree with this module whatever order the sentinels come in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

from .config import FleetConfig
from .errors import ConfigError

# Shared by every store client: a dead socket is noticed within seconds, a command
# that times out is retried once on a fresh connection.
CLIENT_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 5,
    "socket_timeout": 30,
    "health_check_interval": 25,
    "retry_on_timeout": True,
}

# A command someone waits on at a prompt (status, result, dlq, report...) gives up within
# seconds on a Redis that takes the connection but never answers (a hung server, a port
# forwarded to nothing): with the options above that is 2 x 30 s per command, minutes for
# `status`. Services (workers, reaper, API, metrics) keep the patient ones. The timeout is
# per read, not per reply, so a large pipelined batch still streams back.
INTERACTIVE_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 3,
    "socket_timeout": 5,
    "retry_on_timeout": False,
}


def use_interactive_timeouts() -> None:
    """From here on, every store client this process opens gives up within seconds."""
    CLIENT_OPTIONS.update(INTERACTIVE_OPTIONS)


@dataclass(frozen=True)
class SentinelUrl:
    sentinels: tuple[tuple[str, int], ...]
    db: int
    username: str | None
    password: str | None


def is_sentinel(url: str) -> bool:
    return url.strip().lower().startswith("sentinel://")


def parse_sentinel_url(url: str) -> SentinelUrl:
    """``sentinel://[user:pass@]h1:p1;sentinel://h2:p2/DB`` -> its parts; the first chunk
    that carries a database or credentials gives them to all."""
    hosts: list[tuple[str, int]] = []
    db: int | None = None
    username = password = None
    for chunk in (c.strip() for c in url.split(";") if c.strip()):
        parts = urlsplit(chunk)
        if parts.scheme.lower() != "sentinel" or not parts.hostname:
            raise ConfigError(f"not a sentinel URL chunk: {chunk.split('@')[-1]!r}")
        hosts.append((parts.hostname, parts.port or 26379))
        path = parts.path.strip("/")
        if path and db is None:
            if not path.isdigit():
                raise ConfigError(f"sentinel URL: database must be a number, not {path!r}")
            db = int(path)
        if parts.password is not None and password is None:
            username = unquote(parts.username) if parts.username else None
            password = unquote(parts.password)
    if not hosts:
        raise ConfigError("sentinel URL names no sentinel")
    return SentinelUrl(tuple(hosts), db or 0, username, password)


def celery_url(url: str) -> str:
    """The URL as Celery and kombu want it: each sentinel chunk with the credentials and
    the database. Plain URLs are returned as they are."""
    if not is_sentinel(url):
        return url
    s = parse_sentinel_url(url)
    auth = ""
    if s.password is not None:
        auth = f"{s.username or ''}:{s.password}@"
    return ";".join(f"sentinel://{auth}{h}:{p}/{s.db}" for h, p in s.sentinels)


def sentinel_transport_options(config: FleetConfig) -> dict[str, Any]:
    """What kombu's and Celery's Sentinel support read from their transport options."""
    rc = config.redis
    opts: dict[str, Any] = {"master_name": rc.sentinel_master}
    sk: dict[str, Any] = {"socket_timeout": rc.sentinel_socket_timeout_s,
                          "socket_connect_timeout": rc.sentinel_socket_timeout_s}
    if rc.sentinel_password_env:
        sk["password"] = os.environ.get(rc.sentinel_password_env)
    opts["sentinel_kwargs"] = sk
    return opts


def redis_client(config: FleetConfig, url: str | None = None, *,
                 decode_responses: bool = True, **overrides: Any) -> redis.Redis:
    """A client for the fleet's stores (or ``url``): plain, or the Sentinel primary."""
    target = url or config.redis_url
    options = {**CLIENT_OPTIONS, **overrides}
    if not is_sentinel(target):
        return redis.Redis.from_url(target, decode_responses=decode_responses, **options)
    if not config.redis.sentinel_master:
        raise ConfigError("a sentinel:// URL needs redis.sentinel_master in the config")
    s = parse_sentinel_url(target)
    sentinel_kwargs = sentinel_transport_options(config)["sentinel_kwargs"]
    sentinel = Sentinel(list(s.sentinels), sentinel_kwargs=sentinel_kwargs)
    # master_for: a pool whose connections look the primary up through the sentinels
    # on every connect, and drop themselves on READONLY (an old primary come back).
    return sentinel.master_for(
        config.redis.sentinel_master, db=s.db, username=s.username, password=s.password,
        decode_responses=decode_responses, **options)
