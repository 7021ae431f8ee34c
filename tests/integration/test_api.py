"""The HTTP API against a real fleet: a private redis-server, simulated model hosts on
loopback (Ollama and OpenAI wire formats) and Celery worker subprocesses per tier.

Calls go through FastAPI's TestClient, a live uvicorn server, the official OpenAI
SDK, and the ``tierfleet api`` command."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
import schemathesis
import uvicorn
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from prometheus_client.parser import text_string_to_metric_families
from schemathesis import GenerationMode

from tests.support.harness import Worker, every_kind_on, write_config
from tierfleet.api import create_app, is_loopback, load_tokens, serve
from tierfleet.config import ApiConfig, FleetConfig, load_config
from tierfleet.errors import ConfigError
from tierfleet.lab.embedded import EmbeddedRedis
from tierfleet.lab.processes import free_port
from tierfleet.lab.sim.fleet import SimFleet

pytestmark = pytest.mark.integration

TOKENS = ["tok-alpha-0123456789", "tok-beta-9876543210"]
AUTH = {"Authorization": f"Bearer {TOKENS[1]}"}

# local-gpu has a host and no worker: jobs sent there wait, which is how the
# tests reach the 504-with-job-id answer without racing a worker. It comes first
# among the model tiers so that escalation (one tier up, in config order) never
# lands there: local-mac escalates to paid, and paid is the top.
FLEET = """
[tiers.rules]
place = "rules"

[tiers.local-gpu]
place = "local"
models = {{ default = "qwen3-coder:30b" }}

[tiers.local-mac]
place = "local"
models = {{ default = "qwen3:4b" }}

[tiers.paid]
place = "paid"
models = {{ default = "gpt-test" }}

[hosts.mac]
kind = "ollama"
url = "http://127.0.0.1:{mac}"
tier = "local-mac"
models = ["qwen3:4b"]
simulated = true

[hosts.gpu]
kind = "ollama"
url = "http://127.0.0.1:{gpu}"
tier = "local-gpu"
models = ["qwen3-coder:30b"]
simulated = true

[hosts.cloud]
kind = "openai"
url = "http://127.0.0.1:{cloud}/v1"
tier = "paid"
models = ["gpt-test"]
simulated = true

[models."qwen3:4b"]
vision = true

[models."qwen3-coder:30b"]

[models."gpt-test"]
input_per_mtok = 1.0
output_per_mtok = 4.0
vision = true

[policy]
classifier = "keyword"
high_risk_tier = "paid"
premium_tier = "paid"
spill_order = ["local-mac", "paid"]
large_job_tier = "paid"

""" + every_kind_on("local-mac")


@dataclass
class Fleet:
    path: Path
    config: FleetConfig
    client: redis.Redis
    server: EmbeddedRedis
    sim: SimFleet
    workers: list[Worker] = field(default_factory=list)

    def stop(self) -> None:
        for w in self.workers:  # all at once: each takes a moment to shut down
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        for w in self.workers:
            w.stop()
        self.sim.stop()
        self.client.close()
        self.server.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    folder = tmp_path_factory.mktemp("api-fleet")
    server = EmbeddedRedis().start()
    body = FLEET.format(mac=free_port(), gpu=free_port(), cloud=free_port())
    path = write_config(folder / "fleet.toml", server.url, body)
    config = load_config(path)
    sim = SimFleet.from_config(config, scale=0.0, admin_port=None, names=["mac", "cloud"]).start()
    f = Fleet(path=path, config=config, server=server, sim=sim,
              client=redis.Redis.from_url(server.url, decode_responses=True))
    try:
        for tier in ("rules", "local-mac", "paid"):
            f.workers.append(Worker(tier, path).start(f.client))
        yield f
    finally:
        f.stop()


@pytest.fixture(scope="module")
def app(fleet: Fleet) -> Any:
    return create_app(fleet.config, tokens=TOKENS)


@pytest.fixture(scope="module")
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def live(app: Any) -> Iterator[str]:
    """The same app on a real uvicorn server, for the OpenAI SDK."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def sdk(live: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live}/v1", api_key=TOKENS[0], max_retries=0, timeout=60)


def error_of(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"}, body
    assert {"message", "type"} <= set(body["error"]), body
    return body["error"]


# -- schema and auth ----------------------------------------------------------------------


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

    for bad in ("Bearer nope", f"Bearer {TOKENS[0]}x", f"Basic {TOKENS[0]}", TOKENS[0]):
        resp = client.get("/v1/status", headers={"Authorization": bad})
        assert resp.status_code == 401, bad
        assert error_of(resp)["type"] == "authentication_error"

    post = client.post("/v1/jobs", json={"kind": "dedupe", "input": {"items": ["a"]}},
                       headers={"Authorization": "Bearer nope"})
    assert post.status_code == 401

    for token in TOKENS:  # every configured token works (rotation)
        ok = client.get("/v1/status", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        assert {"queues", "workers", "hosts", "parked", "dead_letters"} <= set(ok.json())

    # Probes and scrapers need no token.
    assert client.get("/healthz").json() == {"status": "ok", "redis": True}
    assert client.get("/metrics").status_code == 200


def test_tokens_come_from_the_configured_env_var(fleet: Fleet) -> None:
    cfg = fleet.config.model_copy(update={"api": ApiConfig(tokens_env="MY_TOKENS")})
    assert load_tokens(cfg, {"MY_TOKENS": " a1 , ,b2,"}) == ["a1", "b2"]
    assert load_tokens(cfg, {"TIERFLEET_API_TOKENS": "x"}) == []


def test_serve_refuses_an_open_api_off_loopback(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(fleet.config.api.tokens_env, raising=False)
    with pytest.raises(ConfigError, match="--insecure-no-auth"):
        serve(fleet.config, host="0.0.0.0", port=free_port())
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    assert not is_loopback("example.com")


# -- input limits and errors --------------------------------------------------------------


def test_body_over_the_limit_is_413(fleet: Fleet) -> None:
    small = fleet.config.model_copy(update={"api": ApiConfig(max_body_bytes=2_000)})
    with TestClient(create_app(small, tokens=TOKENS)) as c:
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


def test_redis_down_is_503(fleet: Fleet) -> None:
    down = fleet.config.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(down, tokens=TOKENS)) as c:
        resp = c.post("/v1/jobs", json={"kind": "dedupe", "input": {"items": ["a"]}},
                      headers=AUTH)
        assert resp.status_code == 503
        assert error_of(resp)["code"] == "redis_unavailable"
        assert c.get("/v1/jobs/x1", headers=AUTH).status_code == 503
        assert c.get("/healthz").status_code == 503
        metrics = c.get("/metrics")
        assert metrics.status_code == 200
        assert "tierfleet_redis_up 0.0" in metrics.text


# -- jobs through a real worker ----------------------------------------------------------


def test_job_round_trip_through_a_worker(client: TestClient) -> None:
    resp = client.post("/v1/jobs", headers=AUTH, json={
        "kind": "keyword_route", "input": {"text": "my VPN is down again"},
        "workflow": "support-triage", "id": "api-rt-1"})
    assert resp.status_code == 202, resp.text
    handle = resp.json()
    assert handle["id"] == "api-rt-1"
    assert handle["route"]["tier"] == "rules"
    assert handle["route"]["reasons"]

    result = client.get("/v1/jobs/api-rt-1?wait=60", headers=AUTH)
    assert result.status_code == 200
    body = result.json()
    assert body["status"] == "succeeded", body
    assert body["output"]["label"] == "vpn"
    assert body["trail"] == ["rules"]

    batch = client.post("/v1/jobs/batch", headers=AUTH, json={"jobs": [
        {"kind": "dedupe", "input": {"items": ["a", "A ", "b"]}},
        {"kind": "regex_extract", "input": {"text": "id=7 id=9", "pattern": r"id=(\d)"}},
    ]})
    assert batch.status_code == 202
    ids = [h["id"] for h in batch.json()]
    finals = [client.get(f"/v1/jobs/{i}?wait=60", headers=AUTH).json() for i in ids]
    assert [r["status"] for r in finals] == ["succeeded", "succeeded"]
    assert finals[0]["output"]["count_out"] == 2


def test_batch_with_one_bad_job_enqueues_nothing(client: TestClient, fleet: Fleet) -> None:
    resp = client.post("/v1/jobs/batch", headers=AUTH, json={"jobs": [
        {"id": "batch-ok-1", "kind": "summary", "prompt": "fine", "tier": "local-gpu"},
        {"kind": "summary", "prompt": "x", "tier": "moon"},
    ]})
    assert resp.status_code == 422
    assert error_of(resp)["param"] == "jobs[1].tier"
    assert client.get("/v1/jobs/batch-ok-1", headers=AUTH).status_code == 404
    assert fleet.client.llen("local-gpu") == 0


def test_status_shows_the_fleet(client: TestClient) -> None:
    status = client.get("/v1/status", headers=AUTH).json()
    tiers = {q["tier"]: q for q in status["queues"]}
    assert set(tiers) == {"rules", "local-mac", "local-gpu", "paid"}
    assert tiers["rules"]["workers"] >= 1 and tiers["local-gpu"]["workers"] == 0
    assert {h["host"] for h in status["hosts"]} == {"mac", "gpu", "cloud"}


# -- OpenAI-compatible chat -------------------------------------------------------------


def test_chat_completion_with_the_openai_sdk(sdk: openai.OpenAI) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Say hello to the operators."}],
        temperature=0.2, top_p=0.9, seed=7, presence_penalty=0.1,  # accepted, ignored
        max_tokens=2048,
    )
    completion = raw.parse()
    assert raw.headers["x-tierfleet-tier"] == "local-mac"
    assert raw.headers["x-tierfleet-route"] == "local-mac"
    assert raw.headers["x-tierfleet-simulated"] == "1"
    assert completion.object == "chat.completion"
    assert completion.model == "qwen3:4b"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert "[simulated qwen3:4b]" in (choice.message.content or "")
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert completion.id == f"chatcmpl-{raw.headers['x-tierfleet-job-id']}"


def test_chat_named_model_and_tier_are_respected(sdk: openai.OpenAI) -> None:
    by_model = sdk.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "Summarise: the sky is blue."}])
    assert by_model.headers["x-tierfleet-tier"] == "paid"
    assert by_model.parse().model == "gpt-test"
    paid = by_model.parse().model_extra or {}
    assert paid["tierfleet"]["cost_usd"] > 0

    for name in ("tier:local-mac", "local-mac"):
        raw = sdk.chat.completions.with_raw_response.create(
            model=name, messages=[{"role": "user", "content": f"Ping via {name}."}])
        assert raw.headers["x-tierfleet-tier"] == "local-mac"

    # Tags through the SDK's extra_body and extra_headers.
    raw = sdk.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Prove the lemma carefully."}],
        extra_body={"tierfleet": {"risk": "high", "workflow": "proofs"}},
    )
    assert raw.headers["x-tierfleet-tier"] == "paid"
    raw = sdk.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Prove the other lemma."}],
        extra_headers={"X-Tierfleet-Risk": "high", "X-Tierfleet-Privacy": "confidential"},
    )
    # Confidential beats the high-risk route to paid: it stays on our own hardware.
    assert raw.headers["x-tierfleet-tier"] == "local-mac"


def test_chat_refusals_in_openai_error_shape(sdk: openai.OpenAI) -> None:
    msgs = [{"role": "user", "content": "hello"}]
    with pytest.raises(openai.NotFoundError) as nf:
        sdk.chat.completions.create(model="gpt-4o", messages=msgs)  # type: ignore[arg-type]
    assert nf.value.code == "model_not_found"
    for model in ("gpt-test", "tier:paid", "paid"):
        with pytest.raises(openai.UnprocessableEntityError) as pf:
            sdk.chat.completions.create(model=model, messages=msgs,  # type: ignore[arg-type]
                                        extra_body={"tierfleet": {"privacy": "confidential"}})
        assert pf.value.code == "privacy_forbids", model
        assert pf.value.param == "model"
    with pytest.raises(openai.UnprocessableEntityError) as rules:
        sdk.chat.completions.create(model="tier:rules", messages=msgs)  # type: ignore[arg-type]
    assert rules.value.param == "model"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=str(sdk.base_url), api_key="wrong", max_retries=0) \
            .chat.completions.create(model="auto", messages=msgs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
        ({"messages": [{"role": "user", "content": "x"}],
          "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]},
         "messages.0.role"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "http://169.254.169.254/x.png"}}]}]},
         "messages.0.content.1.image_url.url"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]},
         "messages.0.content.0.image_url.url"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
         "messages.0.content.0"),
        ({"messages": [{"role": "user", "content": "x"}],
          "tierfleet": {"kind": "dedupe"}}, "tierfleet.kind"),
        ({"messages": [{"role": "user", "content": "x"}],
          "tierfleet": {"colour": "red"}}, "tierfleet.colour"),
        ({"messages": [{"role": "user", "content": "   "}]}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ],
)
def test_chat_validation_is_422_naming_the_field(client: TestClient, body: dict[str, Any],
                                                 param: str) -> None:
    resp = client.post("/v1/chat/completions", json={"model": "auto", **body}, headers=AUTH)
    assert resp.status_code == 422, resp.text
    err = error_of(resp)
    assert err["param"].startswith(param), err


def test_chat_bad_header_value_is_422(client: TestClient) -> None:
    resp = client.post("/v1/chat/completions", headers={**AUTH, "X-Tierfleet-Privacy": "top"},
                       json={"model": "auto", "messages": [{"role": "user", "content": "x"}]})
    assert resp.status_code == 422
    assert error_of(resp)["param"] == "x-tierfleet-privacy"


def test_chat_with_an_image_data_url(sdk: openai.OpenAI) -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image bytes").decode()
    raw = sdk.chat.completions.with_raw_response.create(model="auto", messages=[{
        "role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}]}])
    assert raw.headers["x-tierfleet-tier"] in ("local-mac", "paid")
    assert raw.parse().choices[0].message.content


def test_chat_stream_with_the_sdk(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Stream me a greeting."}],
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "[simulated qwen3:4b]" in text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_chat_timeout_is_504_with_the_job_id_to_poll(client: TestClient, fleet: Fleet) -> None:
    resp = client.post("/v1/chat/completions", headers=AUTH, json={
        "model": "tier:local-gpu", "messages": [{"role": "user", "content": "refactor this"}],
        "tierfleet": {"wait_s": 0.5, "workflow": "refactor"}})
    assert resp.status_code == 504
    err = error_of(resp)
    assert err["type"] == "timeout" and err["code"] == "timeout"
    job_id = err["job_id"]
    assert resp.headers["x-tierfleet-job-id"] == job_id
    assert f"/v1/jobs/{job_id}" in err["message"]
    polled = client.get(f"/v1/jobs/{job_id}", headers=AUTH)
    assert polled.status_code == 200
    assert polled.json()["status"] == "pending" and polled.json()["tier"] == "local-gpu"
    assert fleet.client.llen("local-gpu") >= 1


def test_chat_repeated_with_the_same_id_is_answered_once(client: TestClient, fleet: Fleet) -> None:
    body = {"model": "auto", "messages": [{"role": "user", "content": "Idempotent hello."}],
            "tierfleet": {"id": "chat-same-id-1", "cache": False}}
    first = client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert first.status_code == 200, first.text
    calls = fleet.sim.counters("mac").get("chat", 0)
    second = client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert second.status_code == 200
    assert second.json()["choices"] == first.json()["choices"]
    assert fleet.sim.counters("mac").get("chat", 0) == calls  # no second model call


def test_metrics_endpoint_parses_and_counts_requests(client: TestClient) -> None:
    client.get("/v1/jobs/none-1", headers=AUTH)
    text = client.get("/metrics").text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("tierfleet_redis_up", ())] == 1
    assert ("tierfleet_queue_depth", (("tier", "local-gpu"),)) in samples
    assert samples[("tierfleet_workers_live", (("tier", "rules"),))] >= 1
    not_found = ("tierfleet_api_requests_total",
                 (("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "404")))
    assert samples[not_found] >= 1


# -- the command --------------------------------------------------------------------------


def test_api_command_serves_with_tokens(fleet: Fleet) -> None:
    port = free_port()
    env = {**os.environ, "TIERFLEET_CONFIG": str(fleet.path), "TIERFLEET_API_TOKENS": "cli-tok"}
    proc = subprocess.Popen([sys.executable, "-m", "tierfleet", "api", "--port", str(port)],
                            env=env, cwd=fleet.path.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else b""
            assert time.monotonic() < deadline, "tierfleet api did not start"
            time.sleep(0.2)
        assert httpx.get(f"{base}/v1/status").status_code == 401
        ok = httpx.get(f"{base}/v1/status", headers={"Authorization": "Bearer cli-tok"})
        assert ok.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_api_command_refuses_open_public_address(fleet: Fleet) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TIERFLEET_API_TOKENS"}
    env["TIERFLEET_CONFIG"] = str(fleet.path)
    proc = subprocess.run([sys.executable, "-m", "tierfleet", "api", "--host", "0.0.0.0",
                           "--port", str(free_port())], env=env, capture_output=True, text=True,
                          timeout=120, cwd=fleet.path.parent)
    assert proc.returncode != 0
    assert "--insecure-no-auth" in proc.stderr and "Traceback" not in proc.stderr


# -- fuzzing ------------------------------------------------------------------------------


def test_fuzz_the_schema_no_5xx(fleet: Fleet) -> None:
    """schemathesis against the API's own schema, valid and invalid inputs: never a 5xx.

    Chat requests really run (simulated hosts, real workers), so this app's policy
    is kept off local-gpu (no worker there); everything else is the fleet above.
    """
    cfg = fleet.config
    fuzz_cfg = cfg.model_copy(update={
        "tiers": {k: v for k, v in cfg.tiers.items() if k != "local-gpu"},
        "hosts": {k: v for k, v in cfg.hosts.items() if k != "gpu"},
        "api": ApiConfig(wait_timeout_s=20, max_body_bytes=200_000),
    })
    app = create_app(fuzz_cfg, tokens=TOKENS)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    ops = [r.ok() for r in schema.get_all_operations()]
    # Chat first: the job fuzzing after it fills the workers' queues.
    ops.sort(key=lambda op: (op.path != "/v1/chat/completions", op.path, op.method))
    assert len(ops) == 7
    seen: dict[int, int] = {}
    no_inputs: list[str] = []

    for op in ops:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=40, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def call(case: schemathesis.Case) -> None:
                resp = case.call(headers=AUTH)
                seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
                assert resp.status_code < 500, (
                    f"{case.method} {case.formatted_path} -> {resp.status_code}: "
                    f"{resp.text[:400]}\nbody={case.body!r}\nquery={case.query!r}"
                )

            try:
                call()
            except Unsatisfiable:
                # No input to make invalid (GET /healthz, /metrics).
                assert mode is GenerationMode.NEGATIVE
                no_inputs.append(op.label)
    assert sorted(no_inputs) == ["GET /healthz", "GET /metrics"]
    # The fuzzing reached real work, not only refusals.
    assert seen.get(200, 0) > 0 and seen.get(202, 0) > 0 and seen.get(422, 0) > 0, seen
