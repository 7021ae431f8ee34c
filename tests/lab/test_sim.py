"""The simulated hosts: wire shapes against the documented examples, labels, faults, life cycle.

Documented examples, as each provider's API reference shows them: Ollama's /api/chat
non-stream answer and /api/tags, OpenAI's chat.completion and error body, Runpod's /run,
/status, /health and /cancel.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.sim_fixtures import RUNPOD_KEY_ENV, SIM_KEYS, sim_config, sim_hosts
from tierfleet.config import load_config
from tierfleet.lab.sim import SimAdmin, SimFleet, SimProcess, compose, profile_for, write_config

RUNPOD_AUTH = {"Authorization": f"Bearer {SIM_KEYS[RUNPOD_KEY_ENV]}"}
OPENAI_AUTH = {"Authorization": "Bearer test-openai-key"}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimFleet]:
    with sim_hosts() as fleet:
        yield fleet


@pytest.fixture(autouse=True)
def _clean(sim: SimFleet) -> None:
    sim.reset()


def chat(url: str, **body: object) -> httpx.Response:
    payload = {
        "model": "qwen3:4b",
        "messages": [{"role": "user", "content": "Summarize: the printer on floor 3 jams daily."}],
        "stream": False,
    }
    payload.update(body)
    return httpx.post(f"{url}/api/chat", json=payload, timeout=5)


# -- Ollama ------------------------------------------------------------------------------


def test_ollama_chat_matches_the_documented_answer(sim: SimFleet) -> None:
    r = chat(sim.urls["sim-ollama"])
    assert r.status_code == 200
    assert r.headers["x-tierfleet-simulated"] == "1"
    body = r.json()
    documented = {
        "model",
        "created_at",
        "message",
        "done",
        "done_reason",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    }
    assert documented <= set(body)
    assert body["done"] is True and body["done_reason"] == "stop"
    assert body["message"]["role"] == "assistant"
    assert body["message"]["content"].startswith("[simulated qwen3:4b]")
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(body[key], int) and body[key] > 0  # nanoseconds
    assert body["prompt_eval_count"] > 0 and body["eval_count"] > 0
    assert body["created_at"].endswith("Z")


def test_ollama_streams_ndjson_unless_told_not_to(sim: SimFleet) -> None:
    r = httpx.post(
        f"{sim.urls['sim-ollama']}/api/chat",
        json={"model": "qwen3:4b", "messages": [{"role": "user", "content": "hello there"}]},
        timeout=5,
    )
    assert r.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert lines[0]["done"] is False and lines[-1]["done"] is True
    assert "eval_count" in lines[-1]


def test_ollama_liveness_version_tags(sim: SimFleet) -> None:
    url = sim.urls["sim-gpu"]
    root = httpx.get(url + "/")
    assert root.status_code == 200 and root.text == "Ollama is running"
    assert "version" in httpx.get(url + "/api/version").json()
    tags = httpx.get(url + "/api/tags").json()
    names = [m["name"] for m in tags["models"]]
    assert names == ["qwen3-coder:30b", "deepseek-r1:8b", "granite3.2-vision:2b"]
    entry = tags["models"][0]
    assert {"name", "model", "modified_at", "size", "digest", "details"} <= set(entry)
    assert {
        "parent_model",
        "format",
        "family",
        "families",
        "parameter_size",
        "quantization_level",
    } <= set(entry["details"])


def test_ollama_errors_use_its_error_shape(sim: SimFleet) -> None:
    url = sim.urls["sim-ollama"]
    missing = chat(url, model="llama9:70b")
    assert missing.status_code == 404
    assert missing.json() == {"error": "model 'llama9:70b' not found"}
    # tag defaults to latest: "qwen3" is not "qwen3:4b"
    assert chat(url, model="qwen3").status_code == 404
    long = [{"role": "user", "content": "word " * 40_000}]
    assert chat(url, messages=long, truncate=False).status_code == 400
    assert "exceeds the context length" in chat(url, messages=long, truncate=False).json()["error"]
    # Ollama's default silently truncates: 200, prompt cut to the window.
    cut = chat(url, messages=long)
    assert cut.status_code == 200 and cut.json()["prompt_eval_count"] <= 32768


def test_load_request_without_messages(sim: SimFleet) -> None:
    body = chat(sim.urls["sim-ollama"], messages=[]).json()
    assert body["done_reason"] == "load" and body["message"]["content"] == ""


# -- OpenAI-compatible ---------------------------------------------------------------------


def test_openai_chat_matches_the_documented_answer(sim: SimFleet) -> None:
    url = sim.urls["sim-openai"]
    r = httpx.post(
        f"{url}/chat/completions",
        headers=OPENAI_AUTH,
        json={"model": "gpt-5.5", "messages": [{"role": "user", "content": "Write a haiku"}]},
    )
    assert r.status_code == 200 and r.headers["x-tierfleet-simulated"] == "1"
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert {"id", "object", "created", "model", "choices", "usage"} <= set(body)
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].startswith("[simulated gpt-5.5]")
    u = body["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] > 0
    models = httpx.get(f"{url}/models", headers=OPENAI_AUTH).json()
    assert models["object"] == "list" and models["data"][0]["id"] == "gpt-5.5"


def test_ollama_hosts_also_speak_v1(sim: SimFleet) -> None:
    r = httpx.post(
        f"{sim.urls['sim-ollama']}/v1/chat/completions",
        json={"model": "qwen3:4b", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0


def test_openai_errors_use_its_error_shape(sim: SimFleet) -> None:
    url = sim.urls["sim-openai"]
    no_key = httpx.post(f"{url}/chat/completions", json={"model": "gpt-5.5", "messages": []})
    assert no_key.status_code == 401
    wrong = httpx.post(
        f"{url}/chat/completions",
        headers={"Authorization": "Bearer nope"},
        json={"model": "gpt-5.5", "messages": [{"role": "user", "content": "x"}]},
    )
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    missing = httpx.post(
        f"{url}/chat/completions",
        headers=OPENAI_AUTH,
        json={"model": "gpt-0", "messages": [{"role": "user", "content": "x"}]},
    )
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    sim.fault("sim-openai", "quota", count=1)
    quota = httpx.post(
        f"{url}/chat/completions",
        headers=OPENAI_AUTH,
        json={"model": "gpt-5.5", "messages": [{"role": "user", "content": "x"}]},
    )
    err = quota.json()["error"]
    assert quota.status_code == 429 and err["code"] == err["type"] == "insufficient_quota"
    assert set(err) == {"message", "type", "param", "code"}


# -- answers -------------------------------------------------------------------------------


def test_answers_are_deterministic_labelled_and_honour_limits() -> None:
    msgs = [{"role": "user", "content": "Summarize the outage report for the Berlin office."}]
    a = compose("qwen3:4b", msgs)
    assert a == compose("qwen3:4b", msgs)
    assert a.text.startswith("[simulated qwen3:4b]") and a.finish_reason == "stop"
    cut = compose("qwen3:4b", msgs, max_tokens=5)
    assert cut.finish_reason == "length" and cut.tokens_out == 5
    data = json.loads(compose("qwen3:4b", msgs, json_output=True).text)
    assert data["simulated"] is True and data["model"] == "qwen3:4b"
    label = json.loads(
        compose("qwen3:4b", [{"role": "user", "content": "Classify: vpn down"}], json_output=True).text
    )
    assert "label" in label


@pytest.mark.parametrize(
    ("model", "vision", "low", "high"),
    [
        ("qwen3:4b", False, 0.15, 0.5),  # seed: ~0.3 s
        ("qwen3-coder:30b", False, 7.5, 12.5),  # seed: 8-12 s
        ("granite3.2-vision:2b", True, 3.5, 13.5),  # seed: 4-13 s
        ("deepseek-r1:8b", False, 4.5, 8.5),  # seed: 5-8 s
    ],
)
def test_latency_model_follows_the_seed(model: str, vision: bool, low: float, high: float) -> None:
    prompts = [f"Please look at ticket {i}: the build fails on step {i * 7}." for i in range(20)]
    lat = [compose(model, [{"role": "user", "content": p}], vision=vision).latency_s for p in prompts]
    assert low <= min(lat) and max(lat) <= high
    scaled = compose(model, [{"role": "user", "content": prompts[0]}], vision=vision, scale=0.01)
    assert scaled.latency_s == pytest.approx(lat[0] * 0.01)


def test_profiles_by_name() -> None:
    assert profile_for("qwen3:4b") != profile_for("qwen3-coder:30b")
    assert profile_for("smollm2:135m") == profile_for("qwen3:4b")
    assert profile_for("anything", vision=True) == profile_for("granite3.2-vision:2b")


# -- faults --------------------------------------------------------------------------------


def test_down_refuses_connections_and_up_listens_on_the_same_port(sim: SimFleet) -> None:
    url = sim.urls["sim-ollama"]
    sim.down("sim-ollama")
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/api/tags", timeout=1)
    assert sim.status("sim-ollama")["up"] is False
    sim.up("sim-ollama")
    assert sim.urls["sim-ollama"] == url
    assert httpx.get(url + "/api/tags", timeout=1).status_code == 200


def test_a_request_waiting_in_the_backlog_as_the_host_goes_down_is_counted_not_reset(
        sim: SimFleet) -> None:
    """Its client sent it, so the client must count it as possibly billed: the host counts
    it too (and drops it unanswered) rather than resetting a request it never saw."""
    import socket

    host = sim.host("sim-ollama")
    assert host._server is not None
    host._server.shutdown()  # the server stops taking connections; the kernel still does
    port = host.port
    body = json.dumps({"model": "qwen3:4b", "messages": [{"role": "user", "content": "hi"}],
                       "stream": False}).encode()
    conn = socket.create_connection(("127.0.0.1", port), timeout=2)
    conn.sendall(b"POST /api/chat HTTP/1.0\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    sim.down("sim-ollama")
    assert conn.recv(1000) == b""  # closed without an answer, not reset
    conn.close()
    assert sim.counters("sim-ollama").get("chat") == 1
    assert [c["route"] for c in sim.calls("sim-ollama")] == ["chat"]
    sim.up("sim-ollama")


def test_hang_accepts_and_never_answers(sim: SimFleet) -> None:
    url = sim.urls["sim-ollama"]
    sim.fault("sim-ollama", "hang")
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(url + "/api/tags", timeout=httpx.Timeout(0.3, connect=1))
    sim.clear("sim-ollama", "hang")
    assert httpx.get(url + "/api/tags", timeout=1).status_code == 200


def test_rate_limit_with_retry_after_then_recovers(sim: SimFleet) -> None:
    url = sim.urls["sim-ollama"]
    sim.fault("sim-ollama", "rate_limit", retry_after=7, count=1)
    first = chat(url)
    assert first.status_code == 429 and first.headers["Retry-After"] == "7"
    assert chat(url).status_code == 200
    # health checks are not rate limited by a generation fault
    sim.fault("sim-ollama", "rate_limit")
    assert httpx.get(url + "/api/tags").status_code == 200


def test_error_busy_and_slow(sim: SimFleet) -> None:
    url = sim.urls["sim-ollama"]
    sim.fault("sim-ollama", "error", count=1)
    assert chat(url).status_code == 500
    sim.fault("sim-ollama", "busy", count=1)
    busy = chat(url)
    assert busy.status_code == 503 and "server busy" in busy.json()["error"]
    sim.fault("sim-ollama", "slow", seconds=0.3, count=1)
    started = time.monotonic()
    assert chat(url).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_counters_and_recorded_requests(sim: SimFleet) -> None:
    url = sim.urls["sim-ollama"]
    chat(url)
    httpx.get(url + "/api/tags")
    counters = sim.counters("sim-ollama")
    assert counters["chat"] == 1 and counters["tags"] == 1 and counters["requests"] == 2
    recorded = sim.requests("sim-ollama")
    assert recorded[0]["route"] == "chat" and recorded[0]["body"]["stream"] is False


def test_bad_fault_is_refused(sim: SimFleet) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        sim.fault("sim-ollama", "meteor")


def test_admin_endpoint_over_http(sim: SimFleet) -> None:
    assert sim.admin_url is not None
    admin = SimAdmin(sim.admin_url)
    try:
        state = admin.fault("sim-ollama", "error", status=502, count=1)
        assert state["faults"]["error"]["status"] == 502
        assert chat(sim.urls["sim-ollama"]).status_code == 502
        assert admin.counters("sim-ollama")["chat"] == 1
        admin.down("sim-gpu")
        assert admin.status()["sim-gpu"]["up"] is False
        admin.reset()
        assert admin.status("sim-gpu")["up"] is True
        with pytest.raises(ValueError, match="404"):
            admin.fault("no-such-host", "error")
    finally:
        admin.close()


# -- Runpod --------------------------------------------------------------------------------


def test_runpod_wire_walk_and_shapes(sim: SimFleet) -> None:
    url = sim.urls["sim-runpod"]
    sim.host("sim-runpod").runpod_queue_s = 100  # x 0.01: 1 s queued (a loaded box still sees it)
    sim.fault("sim-runpod", "slow", seconds=0.3, count=1)
    body = {
        "input": {
            "messages": [{"role": "user", "content": "refactor this"}],
            "model": "qwen3-coder:30b",
        }
    }
    run = httpx.post(f"{url}/run", json=body, headers=RUNPOD_AUTH)
    assert run.status_code == 200 and run.headers["x-tierfleet-simulated"] == "1"
    job = run.json()
    assert set(job) == {"id", "status"} and job["status"] == "IN_QUEUE"
    seen = []
    for _ in range(200):
        state = httpx.get(f"{url}/status/{job['id']}", headers=RUNPOD_AUTH).json()
        if not seen or seen[-1] != state["status"]:
            seen.append(state["status"])
        if state["status"] == "COMPLETED":
            break
        time.sleep(0.02)
    assert seen == ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    assert {"delayTime", "executionTime", "id", "output", "status"} <= set(state)
    out = state["output"]
    assert out["text"].startswith("[simulated qwen3-coder:30b]")
    assert out["tokens_in"] > 0 and out["tokens_out"] > 0 and out["finish_reason"] == "stop"
    health = httpx.get(f"{url}/health", headers=RUNPOD_AUTH).json()
    assert set(health["jobs"]) == {"completed", "failed", "inProgress", "inQueue", "retried"}
    assert set(health["workers"]) >= {"idle", "running"}
    assert health["jobs"]["completed"] == 1


def test_runpod_auth_unknown_ids_cancel_and_runsync(sim: SimFleet) -> None:
    url = sim.urls["sim-runpod"]
    body = {"input": {"messages": [{"role": "user", "content": "x"}]}}
    assert httpx.post(f"{url}/run", json=body).status_code == 401
    assert httpx.get(f"{url}/health").status_code == 401
    assert httpx.get(f"{url}/status/nope", headers=RUNPOD_AUTH).status_code == 404
    assert httpx.post(f"{url}/cancel/nope", headers=RUNPOD_AUTH).status_code == 404
    other = url.rsplit("/", 1)[0] + "/other-endpoint"
    assert httpx.post(f"{other}/run", json=body, headers=RUNPOD_AUTH).status_code == 404
    assert httpx.post(f"{url}/run", json={"no": "input"}, headers=RUNPOD_AUTH).status_code == 400
    sim.host("sim-runpod").runpod_queue_s = 500  # 5 s: still queued when we cancel
    job = httpx.post(f"{url}/run", json=body, headers=RUNPOD_AUTH).json()
    cancelled = httpx.post(f"{url}/cancel/{job['id']}", headers=RUNPOD_AUTH).json()
    assert cancelled == {"id": job["id"], "status": "CANCELLED"}
    sim.host("sim-runpod").runpod_queue_s = 1
    done = httpx.post(f"{url}/runsync", json=body, headers=RUNPOD_AUTH, timeout=5).json()
    assert done["status"] == "COMPLETED" and done["id"].startswith("sync-")
    assert {"delayTime", "executionTime", "output"} <= set(done)


def test_runpod_injected_failed_and_timed_out(sim: SimFleet) -> None:
    url = sim.urls["sim-runpod"]
    body = {"input": {"messages": [{"role": "user", "content": "x"}]}}
    sim.fault("sim-runpod", "fail", count=1)
    failed = httpx.post(f"{url}/runsync", json=body, headers=RUNPOD_AUTH, timeout=5).json()
    assert failed["status"] == "FAILED" and failed["error"]
    assert failed["output"]["error_type"] == "upstream_error"
    sim.fault("sim-runpod", "timed_out", count=1)
    timed = httpx.post(f"{url}/runsync", json=body, headers=RUNPOD_AUTH, timeout=5).json()
    assert timed["status"] == "TIMED_OUT"
    # Like deploy/runpod_handler.py, unknown input fields fail the job as bad input.
    odd = {"input": {"messages": [{"role": "user", "content": "x"}], "options": {}}}
    bad = httpx.post(f"{url}/runsync", json=odd, headers=RUNPOD_AUTH, timeout=5).json()
    assert bad["status"] == "FAILED" and bad["output"]["error_type"] == "bad_input"


# -- processes and config files ------------------------------------------------------------


def test_sim_as_a_subprocess_driven_through_admin(tmp_path: Path) -> None:
    src = write_config(sim_config(), tmp_path / "fleet.toml")  # URLs on port 0
    resolved = tmp_path / "resolved.toml"
    with SimProcess(src, scale=0.01, names=["sim-ollama"], write_config=resolved) as proc:
        url = proc.hosts["sim-ollama"]
        # The child wrote the config with the port it chose, for worker subprocesses.
        assert load_config(resolved).hosts["sim-ollama"].url == url
        assert chat(url).status_code == 200
        proc.admin.down("sim-ollama")
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/api/tags", timeout=1)
        proc.admin.up("sim-ollama")
        assert proc.admin.counters("sim-ollama")["chat"] == 1
        assert httpx.get(url + "/api/tags", timeout=1).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/api/tags", timeout=1)


def test_config_round_trip_keeps_real_ports() -> None:
    with sim_hosts(admin=False) as fleet:
        cfg = fleet.config
        for name, h in cfg.hosts.items():
            assert h.url.startswith(f"http://127.0.0.1:{fleet.host(name).port}")
        assert cfg.hosts["sim-runpod"].url.endswith("/v2/sim-endpoint")
        assert sim_config().hosts["sim-ollama"].url == "http://127.0.0.1:0"
