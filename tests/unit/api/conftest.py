"""The API in process: FastAPI's TestClient over a dispatcher on fakeredis and Celery's
in-memory broker. Nothing listens on a port and no worker runs, so a job stays pending
unless a test stores its result."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import httpx
import pytest
from celery import Celery
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.support.fleets import api_fleet
from tests.support.harness import write_config
from tierfleet.api import create_app
from tierfleet.config import FleetConfig, load_config
from tierfleet.dispatch import Dispatcher

# Two producers; beta has two tokens (a rotation), alpha one.
KEYS = {"alpha": "tok-alpha-0123456789", "beta": "tok-beta-9876543210",
        "beta-rotated": "tok-beta-rotated-5555"}
TOKENS = [f"alpha:{KEYS['alpha']}", f"beta:{KEYS['beta']}", f"beta:{KEYS['beta-rotated']}"]
AUTH = {"Authorization": f"Bearer {KEYS['beta']}"}
OTHER_AUTH = {"Authorization": f"Bearer {KEYS['alpha']}"}


@pytest.fixture
def config(tmp_path: Path) -> FleetConfig:
    # Port 9: nobody answers there, and nothing here calls a host anyway.
    body = api_fleet().format(mac=9, gpu=9, cloud=9)
    return load_config(write_config(tmp_path / "fleet.toml", "redis://127.0.0.1:9/0", body))


@pytest.fixture
def fake() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(decode_responses=True)


@pytest.fixture
def make_app(fake: fakeredis.FakeRedis) -> Callable[[FleetConfig], FastAPI]:
    def make(cfg: FleetConfig) -> FastAPI:
        d = Dispatcher(cfg, client=fake, app=Celery("api-unit", broker="memory://"))
        return create_app(cfg, d, tokens=TOKENS)

    return make


@pytest.fixture
def app(config: FleetConfig, make_app: Callable[[FleetConfig], FastAPI]) -> FastAPI:
    return make_app(config)


@pytest.fixture
def dispatcher(app: FastAPI) -> Dispatcher:
    return app.state.dispatcher  # type: ignore[no-any-return]


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    # raise_server_exceptions off: a crash must come back as the API's 500, as in production.
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def error_of(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"}, body
    assert {"message", "type"} <= set(body["error"]), body
    return body["error"]
