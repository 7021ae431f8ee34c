"""The job routes, status, schema and auth, in process (no Redis server, no worker)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.unit.api.conftest import AUTH, KEYS, TOKENS, error_of
from tierfleet.api import is_loopback, load_tokens, serve
from tierfleet.config import ApiConfig, FleetConfig
from tierfleet.dispatch import Dispatcher
from tierfleet.errors import ConfigError
from tierfleet.jobs import Result, Status
from tierfleet.lab.processes import free_port


def test_openapi_schema_is_served_and_describes_the_api(client: TestClient) -> None:
    resp = client.get("/openapi.json")
    assert resp.status_code == 200
    schema = resp.json()
    for path in ("/v1/jobs", "/v1/jobs/batch", "/v1/jobs/{job_id}", "/v1/status",
                 "/v1/chat/completions", "/metrics", "/healthz"):
        assert path in schema["paths"], path
    schemas = schema["components"]["schemas"]
    assert {"Job", "Result", "Route", "ErrorResponse", "ChatCompletionRequest",
            "ChatCompletion"} <= set(schemas)
    assert "kind" in schemas["Job"]["properties"]
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "$ref" in str(schema["paths"]["/v1/jobs"]["post"]["responses"]["422"])


def test_auth_missing_wrong_and_right_token(client: TestClient) -> None:
    missing = client.get("/v1/status")
    assert missing.status_code == 401
    assert error_of(missing)["code"] == "missing_api_key"
    assert missing.headers["www-authenticate"] == "Bearer"

    for bad in ("Bearer nope", f"Bearer {KEYS['alpha']}x", f"Basic {KEYS['alpha']}",
                KEYS["alpha"], f"Bearer {TOKENS[0]}"):
        resp = client.get("/v1/status", headers={"Authorization": bad})
        assert resp.status_code == 401, bad
        assert error_of(resp)["type"] == "authentication_error"

    post = client.post("/v1/jobs", json={"kind": "dedupe", "input": {"items": ["a"]}},
                       headers={"Authorization": "Bearer nope"})
    assert post.status_code == 401

    for token in KEYS.values():  # every configured token works (rotation)
        ok = client.get("/v1/status", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        assert {"queues", "workers", "hosts", "parked", "dead_letters"} <= set(ok.json())

    # Probes and scrapers need no token.
    assert client.get("/healthz").json() == {"status": "ok", "redis": True}
    assert client.get("/metrics").status_code == 200
    # Load balancers probe with HEAD: the same status, no body.
    for path in ("/healthz", "/metrics"):
        head = client.head(path)
        assert head.status_code == 200 and head.content == b"", path


def test_tokens_come_from_the_configured_env_var(config: FleetConfig) -> None:
    cfg = config.model_copy(update={"api": ApiConfig(tokens_env="MY_TOKENS")})
    assert load_tokens(cfg, {"MY_TOKENS": " a1 , ,b2,"}) == ["a1", "b2"]
    assert load_tokens(cfg, {"TIERFLEET_API_TOKENS": "x"}) == []


def test_serve_refuses_an_open_api_off_loopback(config: FleetConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.api.tokens_env, raising=False)
    with pytest.raises(ConfigError, match="--insecure-no-auth"):
        serve(config, host="0.0.0.0", port=free_port())
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    assert not is_loopback("example.com")


def test_a_job_is_accepted_routed_and_pending(client: TestClient, dispatcher: Dispatcher) -> None:
    resp = client.post("/v1/jobs", json={"kind": "keyword_route", "input": {"text": "vpn down"}},
                       headers=AUTH)
    assert resp.status_code == 202, resp.text
    handle = resp.json()
    assert handle["route"]["tier"] == "rules" and handle["route"]["kind"] == "keyword_route"
    polled = client.get(f"/v1/jobs/{handle['id']}", headers=AUTH)
    assert polled.status_code == 200 and polled.json()["status"] == "pending"


def test_a_stored_result_is_what_get_answers(client: TestClient, dispatcher: Dispatcher) -> None:
    job_id = client.post("/v1/jobs", json={"kind": "summary", "prompt": "x"}, headers=AUTH).json()["id"]
    dispatcher.results.save(Result(job_id=job_id, status=Status.SUCCEEDED, text="done", tier="local-mac"))
    got = client.get(f"/v1/jobs/{job_id}?wait=5", headers=AUTH).json()
    assert (got["status"], got["text"], got["tier"]) == ("succeeded", "done", "local-mac")


def test_a_batch_with_one_bad_job_enqueues_nothing(client: TestClient, dispatcher: Dispatcher) -> None:
    jobs: list[dict[str, Any]] = [{"id": "ok-1", "kind": "dedupe", "input": {"items": ["a"]}},
                                  {"id": "bad-1", "kind": "summary", "prompt": "x", "tier": "moon"}]
    resp = client.post("/v1/jobs/batch", json={"jobs": jobs}, headers=AUTH)
    assert resp.status_code == 422
    assert error_of(resp)["param"] == "jobs[1].tier"
    assert dispatcher.results.get("ok-1") is None  # not even marked pending
    resp = client.post("/v1/jobs/batch", json={"jobs": jobs[:1]}, headers=AUTH)
    assert resp.status_code == 202 and [h["id"] for h in resp.json()] == ["ok-1"]
