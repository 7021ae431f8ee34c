"""Honest answers: the host's finish reason, model and counts, the route, and /v1/models."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.unit.api.conftest import AUTH, error_of
from tierfleet.api.models import model_list
from tierfleet.config import FleetConfig, ModelConfig
from tierfleet.dispatch import Dispatcher
from tierfleet.jobs import Result, Status


def test_a_cut_answer_says_length_and_names_the_model_that_answered(
        client: TestClient, dispatcher: Dispatcher) -> None:
    dispatcher.results.save(Result(
        job_id="cut-1", status=Status.SUCCEEDED, text="The answer was cu", tier="paid",
        host="cloud", model="gpt-test", served_model="gpt-test-2026-01-01", tokens_in=11,
        tokens_out=4, finish_reason="length", trail=["local-mac", "paid"], cost_usd=0.25,
        reasons=["kind: summary -> local-mac", "worker: local-mac -> paid: mac: HostDown"]))
    resp = client.post("/v1/chat/completions", headers=AUTH, json={
        "model": "auto", "messages": [{"role": "user", "content": "x"}],
        "tierfleet": {"id": "cut-1"}})
    body = resp.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["model"] == "gpt-test-2026-01-01"
    assert body["usage"] == {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}
    info = body["tierfleet"]
    assert info["job_id"] == "cut-1" and info["tier"] == "paid" and info["host"] == "cloud"
    assert info["fallbacks"] == ["local-mac"] and info["cost_usd"] == 0.25
    assert info["reasons"][-1].startswith("worker: local-mac -> paid")
    streamed = client.post("/v1/chat/completions", headers=AUTH, json={
        "model": "auto", "messages": [{"role": "user", "content": "x"}], "stream": True,
        "tierfleet": {"id": "cut-1"}})
    assert '"finish_reason": "length"' in streamed.text


def test_models_lists_auto_models_and_tiers_with_privacy_and_capabilities(
        client: TestClient) -> None:
    resp = client.get("/v1/models", headers=AUTH)
    assert resp.status_code == 200
    listing = resp.json()
    assert listing["object"] == "list"
    by_id = {m["id"]: m for m in listing["data"]}
    assert {"auto", "qwen3:4b", "gpt-test", "qwen3-coder:30b", "tier:local-mac", "tier:paid",
            "tier:local-gpu"} <= set(by_id)
    assert "tier:rules" not in by_id  # rules answer no chat
    assert all(m["object"] == "model" for m in listing["data"])
    paid = by_id["gpt-test"]["tierfleet"]
    assert paid["tiers"] == ["paid"] and "confidential" not in paid["privacy"]
    local = by_id["tier:local-mac"]["tierfleet"]
    assert local["privacy"] == ["public", "internal", "confidential"]
    assert local["capabilities"]["context_window"] > 0
    assert by_id["auto"]["tierfleet"]["privacy"] == ["public", "internal", "confidential"]
    assert client.get("/v1/models").status_code == 401


def test_model_capabilities_come_from_the_config(config: FleetConfig) -> None:
    cfg = config.model_copy(update={"models": {
        **config.models, "qwen3:4b": ModelConfig(vision=True, tools=False, context_window=4096)}})
    caps = {m.id: m.tierfleet.capabilities for m in model_list(cfg).data}
    assert caps["qwen3:4b"].vision and not caps["qwen3:4b"].tools
    assert caps["qwen3:4b"].context_window == 4096
    assert caps["gpt-test"].tools


def test_schema_is_served_and_no_page_needs_a_cdn(client: TestClient) -> None:
    assert client.get("/openapi.json").json()["paths"]["/v1/models"]
    assert client.get("/docs").status_code == 404
    assert client.get("/redoc").status_code == 404


def test_one_model_is_retrieved_as_the_sdk_asks_for_it(client: TestClient) -> None:
    """``client.models.retrieve(id)`` calls ``GET /v1/models/{id}``: every listed id answers
    its entry, ids with ':' and '/' included; an unknown one is OpenAI's 404."""
    listing = client.get("/v1/models", headers=AUTH).json()["data"]
    for entry in listing:
        resp = client.get(f"/v1/models/{entry['id']}", headers=AUTH)
        assert resp.status_code == 200, (entry["id"], resp.text)
        assert resp.json() == entry
    # What a chat request accepts in ``model`` is found too: auto's aliases, a bare tier.
    assert client.get("/v1/models/tierfleet/auto", headers=AUTH).json()["tierfleet"]["kind"] == "auto"
    bare = client.get("/v1/models/local-mac", headers=AUTH).json()
    assert bare["id"] == "local-mac" and bare["tierfleet"]["tiers"] == ["local-mac"]
    for unknown in ("gpt-4o", "org/none", "tier:rules", "tier:moon", "..%2F..%2Fetc"):
        resp = client.get(f"/v1/models/{unknown}", headers=AUTH)
        assert resp.status_code == 404, (unknown, resp.text)
        assert error_of(resp)["code"] == "model_not_found"
    assert client.get("/v1/models/auto").status_code == 401
