"""Sentinel URLs, the blink-fixed transports and durable_submit, without a server."""

from __future__ import annotations

from typing import Any

import pytest

from tierfleet.broker import celery_settings
from tierfleet.config import FleetConfig
from tierfleet.connections import celery_url, parse_sentinel_url, redis_client
from tierfleet.durability import DurableSubmit, SubmitNotDurable
from tierfleet.errors import ConfigError
from tierfleet.kombu_fixes import transport_for

SENTINELS = "sentinel://:pw@h1:26379;sentinel://h2:26380;sentinel://h3/2"


def _config(builtin_config: FleetConfig, **changes: Any) -> FleetConfig:
    data = builtin_config.model_dump()
    data.update(changes)
    return FleetConfig(**data)


def test_sentinel_url_parts_and_the_form_celery_reads() -> None:
    s = parse_sentinel_url(SENTINELS)
    assert s.sentinels == (("h1", 26379), ("h2", 26380), ("h3", 26379))
    assert (s.db, s.password) == (2, "pw")
    # Celery and kombu read db and password from the first chunk: every chunk has them.
    assert celery_url(SENTINELS) == (
        "sentinel://:pw@h1:26379/2;sentinel://:pw@h2:26380/2;sentinel://:pw@h3:26379/2")
    assert celery_url("redis://h:6379/0") == "redis://h:6379/0"
    with pytest.raises(ConfigError):
        parse_sentinel_url("sentinel://h1:26379;redis://h2:6379/0")


def test_a_sentinel_url_needs_the_master_name(builtin_config: FleetConfig) -> None:
    with pytest.raises(ValueError, match=r"redis\.sentinel_master"):
        _config(builtin_config, redis_url=SENTINELS)


def test_one_sentinel_config_feeds_broker_results_and_stores(builtin_config: FleetConfig) -> None:
    cfg = _config(builtin_config, redis_url=SENTINELS, redis={"sentinel_master": "mymaster"})
    s = celery_settings(cfg)
    assert s["broker_url"] == s["result_backend"] == celery_url(SENTINELS)
    assert s["broker_transport"] == "tierfleet-sentinel"
    assert s["broker_transport_options"]["master_name"] == "mymaster"  # type: ignore[index]
    assert s["broker_transport_options"]["visibility_timeout"] == 3600  # type: ignore[index]
    assert s["result_backend_transport_options"]["master_name"] == "mymaster"  # type: ignore[index]
    client = redis_client(cfg)  # no connection yet: master_for connects lazily
    pool = client.connection_pool
    assert pool.service_name == "mymaster"
    assert pool.connection_kwargs["db"] == 2 and pool.connection_kwargs["password"] == "pw"


def test_plain_redis_gets_the_blink_fixed_transport_rediss_keeps_kombus() -> None:
    assert transport_for("redis://h:6379/0") == "tierfleet-redis"
    assert transport_for("sentinel://h:26379") == "tierfleet-sentinel"
    assert transport_for("rediss://h:6380/0") is None


class _Server:
    """Just enough of a redis client for DurableSubmit's probe and wait."""

    def __init__(self, version: str, fsync: str = "everysec", replicas_ack: int = 1) -> None:
        self.version, self.fsync, self.replicas_ack = version, fsync, replicas_ack
        self.sent: list[tuple[Any, ...]] = []

    def info(self, section: str) -> dict[str, str]:
        return {"redis_version": self.version}

    def config_get(self, name: str) -> dict[str, str]:
        return {"appendfsync": self.fsync, "appendonly": "yes"}

    def pipeline(self, transaction: bool = False) -> _Server:
        return self

    def incrby(self, *a: Any) -> None:
        self.sent.append(("INCRBY", *a))

    def execute_command(self, *cmd: str) -> None:
        self.sent.append(cmd)

    def execute(self) -> list[Any]:
        cmd = self.sent[-1]
        if cmd[0] == "WAITAOF":
            return [1, [1, self.replicas_ack]]
        if cmd[0] == "WAIT":
            return [1, self.replicas_ack]
        return [1]


@pytest.mark.parametrize(("mode", "version", "fsync", "expect"), [
    ("none", "7.0.15", "everysec", None),
    ("aof_local", "7.2.4", "everysec", ("WAITAOF", "1", "0", "1000")),
    ("aof_local", "7.0.15", "always", ()),
    ("replicas", "7.2.4", "everysec", ("WAITAOF", "0", "1", "1000")),
    ("replicas", "7.0.15", "everysec", ("WAIT", "1", "1000")),
])
def test_durable_submit_picks_what_the_server_can_do(
        builtin_config: FleetConfig, mode: str, version: str, fsync: str,
        expect: tuple[str, ...] | None) -> None:
    cfg = _config(builtin_config, reliability={**builtin_config.reliability.model_dump(),
                                               "durable_submit": mode})
    d = DurableSubmit(cfg, _Server(version, fsync))  # type: ignore[arg-type]
    assert d.command() == expect
    d.after_publish(3)


def test_aof_local_on_a_server_without_waitaof_is_a_config_error(
        builtin_config: FleetConfig) -> None:
    cfg = _config(builtin_config, reliability={**builtin_config.reliability.model_dump(),
                                               "durable_submit": "aof_local"})
    with pytest.raises(ConfigError, match=r"no WAITAOF \(needs >= 7.2\)"):
        DurableSubmit(cfg, _Server("7.0.15", "everysec")).command()  # type: ignore[arg-type]


def test_too_few_replicas_is_not_acknowledged(builtin_config: FleetConfig) -> None:
    cfg = _config(builtin_config, reliability={**builtin_config.reliability.model_dump(),
                                               "durable_submit": "replicas"})
    with pytest.raises(SubmitNotDurable, match="replicas 0/1"):
        DurableSubmit(cfg, _Server("7.0.15", replicas_ack=0)).after_publish(2)  # type: ignore[arg-type]
