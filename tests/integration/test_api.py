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

from tests.support.fleets import api_fleet
from tests.support.harness import Worker, write_config
from tierfleet.api import create_app
from tierfleet.config import ApiConfig, FleetConfig, load_config
from tierfleet.lab.embedded import EmbeddedRedis
from tierfleet.lab.processes import free_port
from tierfleet.lab.sim.fleet import SimFleet

pytestmark = pytest.mark.integration

TOKENS = ["tok-alpha-0123456789", "tok-beta-9876543210"]
AUTH = {"Authorization": f"Bearer {TOKENS[1]}"}

FLEET = api_fleet()


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
    # Only this process's own series: the fleet-wide ones have one exporter
    # (`tierfleet metrics`), so scraping both never double-counts.
    assert not any(name in {"tierfleet_queue_depth", "tierfleet_jobs_total",
                            "tierfleet_workers_live"} for name, _ in samples)
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
    # Every route the app serves is fuzzed (a new one is counted here, not skipped).
    assert {f"{op.method.upper()} {op.path}" for op in ops} >= {
        "POST /v1/jobs", "POST /v1/jobs/batch", "GET /v1/jobs/{job_id}", "GET /v1/status",
        "POST /v1/chat/completions", "GET /v1/models", "GET /v1/models/{model_id}",
        "POST /v1/jobs/{job_id}/feedback", "GET /metrics", "GET /healthz"}
    assert len(ops) == 10
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
