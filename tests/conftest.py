"""Shared fixtures. Tests mirror the code: ``unit/`` starts no process (fakeredis, stub
backends, ``httpx.MockTransport``); ``integration/``, ``lab/`` and ``deploy/`` start real
redis-server, Celery workers and hosts, and are marked ``integration`` by folder here."""

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest
import redis

from tierfleet.backends.stub import StubBackend
from tierfleet.config import FleetConfig, load_config, reset_config
from tierfleet.lab.embedded import EmbeddedRedis

# Never pick up a developer's own fleet config or Redis by accident.
for var in ("TIERFLEET_CONFIG", "TIERFLEET_REDIS_URL"):
    os.environ.pop(var, None)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One private redis-server on a free port for the whole run."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield redis_server.url
    client.close()


@pytest.fixture
def rclient(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _fresh_config() -> Iterator[None]:
    reset_config()
    yield
    reset_config()


BUILTIN_CONFIG = Path(__file__).resolve().parents[1] / "src" / "tierfleet" / "defaults.toml"
SLOW_FOLDERS = {"integration", "lab", "deploy"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marked by folder, not by hand: anything under a slow folder starts real processes."""
    here = Path(__file__).resolve().parent
    for item in items:
        parts = Path(str(item.fspath)).resolve().relative_to(here).parts
        if parts and parts[0] in SLOW_FOLDERS:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def builtin_config() -> FleetConfig:
    """The shipped defaults, as a user with no config file gets them."""
    return load_config(BUILTIN_CONFIG)


@pytest.fixture
def fake_redis() -> fakeredis.FakeRedis:
    """An in-process Redis for unit tests. It must run Lua: the result store's
    first-final-wins upsert is a script, and a stand-in for it would test nothing."""
    if importlib.util.find_spec("lupa") is None:
        pytest.fail("fakeredis runs Lua scripts only with lupa: pip install 'fakeredis[lua]'")
    return fakeredis.FakeRedis(decode_responses=True)


@pytest.fixture
def core_config(builtin_config: FleetConfig, tmp_path: Path) -> FleetConfig:
    """The shipped fleet with the ledger's local trail kept inside the test's folder."""
    builtin_config.ledger.dir = str(tmp_path / "ledger")
    return builtin_config


@pytest.fixture
def stub_backends(core_config: FleetConfig) -> dict[str, StubBackend]:
    """A healthy :class:`StubBackend` with an empty script for every configured host."""
    return {name: StubBackend(name) for name in core_config.hosts}
