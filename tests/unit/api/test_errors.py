"""Error shapes and statuses: every failure in OpenAI's shape, each error family its status."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.unit.api.conftest import AUTH, TOKENS, error_of
from tierfleet.api import create_app
from tierfleet.backends import HostDown, RateLimited
from tierfleet.config import ApiConfig, FleetConfig
from tierfleet.dispatch import Dispatcher
from tierfleet.errors import ConfigError, NoRoute, ResultTimeout, TierfleetError
from tierfleet.lab.processes import free_port


def test_body_over_the_limit_is_413(config: FleetConfig, make_app: Callable[[FleetConfig], FastAPI]) -> None:
    small = config.model_copy(update={"api": ApiConfig(max_body_bytes=2_000)})
    with TestClient(make_app(small)) as c:
        big = {"kind": "summary", "prompt": "x" * 5_000}
        resp = c.post("/v1/jobs", json=big, headers=AUTH)
        assert resp.status_code == 413
        assert error_of(resp)["code"] == "request_too_large"

        # Streamed without a Content-Length: counted as it arrives.
        def chunks() -> Iterator[bytes]:
            yield b'{"kind": "summary", "prompt": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}'

        resp = c.post("/v1/jobs", content=chunks(),
                      headers={**AUTH, "Content-Type": "application/json"})
        assert resp.status_code == 413
        assert error_of(resp)["code"] == "request_too_large"
        # A small job still passes.
        ok = c.post("/v1/jobs", json={"kind": "dedupe", "input": {"items": ["a", "a"]}},
                    headers=AUTH)
        assert ok.status_code == 202


@pytest.mark.parametrize(
    ("job", "param"),
    [
        ({"kind": "telepathy", "prompt": "x"}, "kind"),
        ({"kind": "summary"}, "prompt"),
        ({"kind": "summary", "prompt": "x", "colour": "red"}, "colour"),
        ({"kind": "summary", "prompt": "   "}, "prompt"),
        ({"kind": "json_validate", "input": {"document": {}, "schema": {"type": "nonsense"}}},
         "input.schema"),
        ({"kind": "regex_extract", "input": {"text": "a", "pattern": "(unclosed"}},
         "input.pattern"),
        ({"kind": "summary", "prompt": "x", "tier": "moon"}, "tier"),
        ({"kind": "summary", "prompt": "x", "model": "gpt-99"}, "model"),
        ({"kind": "summary", "prompt": "x", "risk": "extreme"}, "risk"),
        ({"kind": "summary", "prompt": "x", "max_cost_usd": -1}, "max_cost_usd"),
        ({"kind": "summary", "prompt": "x", "id": "has space"}, "id"),
    ],
)
def test_rejected_job_is_422_naming_the_field(client: TestClient, job: dict[str, Any],
                                              param: str) -> None:
    resp = client.post("/v1/jobs", json=job, headers=AUTH)
    assert resp.status_code == 422, resp.text
    err = error_of(resp)
    assert err["param"].startswith(param), err
    assert err["type"] == "invalid_request_error"


def test_privacy_conflict_is_422_not_500(client: TestClient) -> None:
    resp = client.post("/v1/jobs", headers=AUTH, json={
        "kind": "summary", "prompt": "secret plans", "privacy": "confidential", "tier": "paid"})
    assert resp.status_code == 422
    assert error_of(resp)["param"] == "tier"


def test_not_json_and_not_an_object_are_422(client: TestClient) -> None:
    resp = client.post("/v1/jobs", content=b"{not json",
                       headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status_code == 422
    assert error_of(resp)["param"] == "body"
    resp = client.post("/v1/jobs", json=[1, 2], headers=AUTH)
    assert resp.status_code == 422


def test_unknown_job_path_and_method(client: TestClient) -> None:
    resp = client.get("/v1/jobs/no-such-job", headers=AUTH)
    assert resp.status_code == 404
    assert error_of(resp)["code"] == "job_not_found"
    # An unknown id is answered at once, even when asked to wait.
    t0 = time.monotonic()
    assert client.get("/v1/jobs/still-none?wait=30", headers=AUTH).status_code == 404
    assert time.monotonic() - t0 < 10
    resp = client.get("/v1/nothing-here", headers=AUTH)
    assert resp.status_code == 404 and error_of(resp)["code"] == "not_found"
    resp = client.delete("/v1/status", headers=AUTH)
    assert resp.status_code == 405 and error_of(resp)["code"] == "method_not_allowed"


def test_redis_down_is_503(config: FleetConfig) -> None:
    down = config.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(down, tokens=TOKENS)) as c:
        resp = c.post("/v1/jobs", json={"kind": "dedupe", "input": {"items": ["a"]}},
                      headers=AUTH)
        assert resp.status_code == 503
        assert error_of(resp)["code"] == "redis_unavailable"
        assert c.get("/v1/jobs/x1", headers=AUTH).status_code == 503
        assert c.get("/healthz").status_code == 503
        metrics = c.get("/metrics")  # this process's own series answer without Redis
        assert metrics.status_code == 200
        assert 'status="503"' in metrics.text


@pytest.fixture
def failing(dispatcher: Dispatcher,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[BaseException], None]]:
    """Make the next submit raise ``exc``, as the dispatcher or a host would."""
    def fail_with(exc: BaseException) -> None:
        def submit(*_: Any, **__: Any) -> Any:
            raise exc

        monkeypatch.setattr(dispatcher, "submit", submit)

    yield fail_with


JOB = {"kind": "summary", "prompt": "the build failed twice"}


@pytest.mark.parametrize(("exc", "status", "code", "param"), [
    (NoRoute("tier: no tier allowed"), 422, "no_route", "tier"),
    (NoRoute("every tier is down for this job"), 503, "no_route", None),
    (ResultTimeout("1 of 1 job(s) not finished after 5s"), 504, "timeout", None),
    (HostDown("gpu", "connection refused"), 502, "upstream_error", None),
    (RateLimited("cloud", "slow down"), 502, "upstream_error", None),
    (ConfigError("models.x: no price"), 500, "config_error", None),
    (TierfleetError("something the package meant"), 500, "internal_error", None),
])
def test_each_error_family_has_its_status(client: TestClient, failing: Callable[[BaseException], None],
                                          exc: BaseException, status: int, code: str,
                                          param: str | None) -> None:
    failing(exc)
    resp = client.post("/v1/jobs", json=JOB, headers=AUTH)
    assert resp.status_code == status, resp.text
    err = error_of(resp)
    assert (err["code"], err.get("param")) == (code, param)
    assert str(exc).split(": ", 1)[-1] in err["message"]
    assert "server configuration error" not in err["message"] or code == "config_error"


def test_a_crash_is_500_without_its_details(client: TestClient,
                                            failing: Callable[[BaseException], None]) -> None:
    failing(RuntimeError("secret internals"))
    resp = client.post("/v1/jobs", json=JOB, headers=AUTH)
    assert resp.status_code == 500
    assert error_of(resp) == {"message": "internal error", "type": "server_error",
                              "code": "internal_error"}


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [200, 900])
def test_input_nested_too_deep_is_422_naming_the_field(client: TestClient, depth: int) -> None:
    body = '{"kind": "json_validate", "input": {"document": ' + _nested(depth) + ', "schema": {}}}'
    resp = client.post("/v1/jobs", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status_code == 422, resp.text
    assert error_of(resp)["param"] == "input"
    batch = '{"jobs": [{"kind": "dedupe", "input": {"items": ["a"]}}, ' + body + "]}"
    resp = client.post("/v1/jobs/batch", content=batch,
                       headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status_code == 422, resp.text
    assert error_of(resp)["param"] == "jobs[1].input"


def test_a_body_too_deep_to_parse_is_422_not_400(client: TestClient) -> None:
    body = '{"kind": "json_validate", "input": {"document": ' + _nested(5000) + "}}"
    for path in ("/v1/jobs", "/v1/chat/completions"):
        resp = client.post(path, content=body, headers={**AUTH, "Content-Type": "application/json"})
        assert resp.status_code == 422, (path, resp.text)
        assert error_of(resp)["param"] == "body"
