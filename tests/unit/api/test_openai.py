"""The OpenAI-compatible endpoint in process: validation, target resolution, waits, stored answers."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.unit.api.conftest import AUTH, error_of
from tierfleet.api.errors import ApiError
from tierfleet.api.openai import resolve_target
from tierfleet.config import FleetConfig
from tierfleet.dispatch import Dispatcher
from tierfleet.jobs import Result, Status


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
        ({"messages": [{"role": "user", "content": "x"}],
          "tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools"),
        ({"messages": [{"role": "user", "content": "x"}],
          "tools": [{"type": "function", "function": {"name": "no spaces"}}]}, "tools"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.tool_call_id"),
        ({"messages": [{"role": "function", "content": "x", "name": "f"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "x"}],
          "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
         "response_format.json_schema.schema"),
        ({"messages": [{"role": "user", "content": "x"}],
          "response_format": {"type": "json_schema", "json_schema": {
              "name": "x", "schema": {"type": "nonsense"}}}},
         "response_format.json_schema.schema"),
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


def test_chat_timeout_is_504_with_the_job_id_to_poll(client: TestClient, config: FleetConfig) -> None:
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


@pytest.mark.parametrize(("model", "privacy", "target"), [
    ("auto", "internal", (None, None)),
    ("tierfleet", "internal", (None, None)),
    ("qwen3:4b", "internal", (None, "qwen3:4b")),  # the policy picks among its tiers
    ("tier:paid", "internal", ("paid", None)),
    ("local-mac", "confidential", ("local-mac", None)),
])
def test_resolve_target(config: FleetConfig, model: str, privacy: str,
                        target: tuple[str | None, str | None]) -> None:
    assert resolve_target(config, model, privacy) == target


@pytest.mark.parametrize(("model", "privacy", "status", "code"), [
    ("gpt-4o", "internal", 404, "model_not_found"),
    ("tier:moon", "internal", 404, "model_not_found"),
    ("gpt-test", "confidential", 422, "privacy_forbids"),
    ("tier:paid", "confidential", 422, "privacy_forbids"),
    ("tier:rules", "internal", 422, "invalid_value"),
])
def test_resolve_target_refusals(config: FleetConfig, model: str, privacy: str, status: int,
                                 code: str) -> None:
    with pytest.raises(ApiError) as info:
        resolve_target(config, model, privacy)
    assert (info.value.status, info.value.code, info.value.param) == (status, code, "model")


def test_a_finished_job_id_is_answered_from_the_store(
        client: TestClient, dispatcher: Dispatcher, monkeypatch: pytest.MonkeyPatch) -> None:
    dispatcher.results.save(Result(job_id="chat-1", status=Status.SUCCEEDED, text="hello again",
                                   tier="local-mac", model="qwen3:4b", tokens_in=3, tokens_out=2,
                                   trail=["local-mac"]))

    def no_second_run(*_: Any, **__: Any) -> Any:
        raise AssertionError("a finished job was submitted again")

    monkeypatch.setattr(dispatcher, "submit", no_second_run)
    body: dict[str, Any] = {"model": "auto", "messages": [{"role": "user", "content": "hello"}],
                            "tierfleet": {"id": "chat-1"}}
    resp = client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["choices"][0]["message"]["content"] == "hello again"
    assert answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert resp.headers["x-tierfleet-tier"] == "local-mac"
    assert resp.headers["x-tierfleet-route"] == "local-mac"
    streamed = client.post("/v1/chat/completions", json={**body, "stream": True}, headers=AUTH)
    events = [ln for ln in streamed.text.splitlines() if ln.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and "hello again" in events[0]


@pytest.mark.parametrize(("status", "code", "http"), [(Status.FAILED, "job_failed", 502),
                                                      (Status.DEAD, "job_dead", 503)])
def test_a_failed_or_dead_job_is_an_error_with_its_id(client: TestClient, dispatcher: Dispatcher,
                                                      status: Status, code: str, http: int) -> None:
    dispatcher.results.save(Result(job_id=f"chat-{code}", status=status, error="host said no"))
    resp = client.post("/v1/chat/completions", headers=AUTH, json={
        "model": "auto", "messages": [{"role": "user", "content": "x"}],
        "tierfleet": {"id": f"chat-{code}"}})
    assert resp.status_code == http
    err = error_of(resp)
    assert err["code"] == code and err["job_id"] == f"chat-{code}" and "host said no" in err["message"]
