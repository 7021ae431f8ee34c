"""Hostile chat requests, as an adversarial client sends them: every one a 4xx in OpenAI's
shape naming the field, answered at once; never a 500, a hang or a silent change."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from tests.unit.api.conftest import AUTH, error_of
from tierfleet.api.tenants import Owners
from tierfleet.dispatch import Dispatcher
from tierfleet.envelope import Delivery
from tierfleet.jobs import Job, Kind, Privacy, Route
from tierfleet.store import Parking

JSON = {**AUTH, "Content-Type": "application/json"}
# local-gpu has no worker here: a request that gets through is a 504 after 0.1 s.
HEAD = '{"model": "tier:local-gpu", "tierfleet": {"wait_s": 0.1}, '
USER = '"messages": [{"role": "user", "content": "hello"}]'


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(("body", "param"), [
    # A lone surrogate: valid JSON escapes, not valid Unicode (nothing can encode it).
    (HEAD + '"messages": [{"role": "user", "content": "\\ud800"}]}', "messages[0].content"),
    (HEAD + USER + ', "user": "\\udfff"}', "user"),
    (HEAD.replace('"wait_s": 0.1', '"wait_s": 0.1, "metadata": {"a": "\\ud800"}') + USER + "}",
     "tierfleet.metadata.a"),
    (HEAD + '"messages": [{"role": "user", "content": [{"type": "text", '
     '"text": "x\\ud83d"}]}]}', "messages[0].content[0].text"),
    # NaN and Infinity are not JSON (RFC 8259); json.loads takes them anyway.
    (HEAD + USER + ', "temperature": NaN}', "temperature"),
    (HEAD + USER + ', "tools": [{"type": "function", "function": {"name": "f", '
     '"parameters": {"type": "object", "maximum": Infinity}}}]}',
     "tools[0].function.parameters.maximum"),
    # Nested past the limit but within what the JSON parser takes, in an unknown field
    # (the retry fingerprint serialises it) and inside a tool call.
    (HEAD + USER + ', "zz": ' + _deep(600) + "}", "zz"),
    (HEAD + '"messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": "c", '
     '"type": "function", "function": {"name": "f", "arguments": "{}", "x": ' + _deep(600)
     + '}}]}, {"role": "user", "content": "x"}]}', "messages[0]"),
], ids=["surrogate-content", "surrogate-unknown-field", "surrogate-metadata", "surrogate-part",
        "nan-temperature", "infinity-tool-schema", "deep-unknown-field", "deep-tool-call"])
def test_chat_body_is_scanned_before_anything_serialises_it(client: TestClient, body: str,
                                                            param: str) -> None:
    resp = client.post("/v1/chat/completions", content=body.encode(), headers=JSON)
    assert resp.status_code == 422, resp.text
    err = error_of(resp)
    assert err["type"] == "invalid_request_error"
    assert err["param"].startswith(param), err


@pytest.mark.parametrize("wait", ["inf", "Infinity", "nan", "1e400"])
def test_a_wait_is_a_finite_number(client: TestClient, wait: str) -> None:
    """"inf" is no wait a caller means: it held the request to api.wait_timeout_s (600 s)."""
    t0 = time.monotonic()
    resp = client.post("/v1/chat/completions", headers=AUTH, json={
        "model": "tier:local-gpu", "messages": [{"role": "user", "content": "x"}],
        "tierfleet": {"wait_s": wait}})
    assert resp.status_code == 422, resp.text
    assert error_of(resp)["param"] == "tierfleet.wait_s"
    job = client.post("/v1/jobs", json={"kind": "summary", "prompt": "x", "tier": "local-gpu"},
                      headers=AUTH).json()["id"]
    resp = client.get(f"/v1/jobs/{job}", params={"wait": wait}, headers=AUTH)
    assert resp.status_code == 422, resp.text
    assert error_of(resp)["param"] == "wait"
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize(("extra", "param"), [
    ({"temperature": 5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"logit_bias": {"50256": 101}}, "logit_bias"),
    ({"logit_bias": "none"}, "logit_bias"),
    ({"seed": "seven"}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"stop": 5}, "stop"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [1, 2]}, "stop"),
    ({"user": {"id": 1}}, "user"),
    ({"logprobs": "yes please"}, "logprobs"),
    ({"logprobs": True}, "logprobs"),
    ({"logprobs": True, "top_logprobs": 5}, "logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"top_logprobs": 50}, "top_logprobs"),
    # Coerced, these would look honoured: OpenAI refuses them too.
    ({"stream": "yes"}, "stream"),
    ({"stream": 1}, "stream"),
    ({"n": "1"}, "n"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_tokens": "64"}, "max_tokens"),
    ({"max_completion_tokens": 1.5}, "max_completion_tokens"),
    ({"parallel_tool_calls": "no"}, "parallel_tool_calls"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
    ({"tool_choice": {"junk": 1}, "tools": [{"type": "function", "function": {"name": "f"}}]},
     "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "g"}},
      "tools": [{"type": "function", "function": {"name": "f"}}]}, "tool_choice"),
])
def test_openai_parameters_are_checked_with_openais_ranges(client: TestClient,
                                                           extra: dict[str, object],
                                                           param: str) -> None:
    resp = client.post("/v1/chat/completions", headers=AUTH, json={
        "model": "tier:local-gpu", "messages": [{"role": "user", "content": "x"}],
        "tierfleet": {"wait_s": 0.1}, **extra})
    assert resp.status_code == 422, resp.text
    assert error_of(resp)["param"].startswith(param), error_of(resp)


def test_valid_openai_parameters_are_accepted_and_ignored(client: TestClient) -> None:
    resp = client.post("/v1/chat/completions", headers=AUTH, json={
        "model": "tier:local-gpu", "messages": [{"role": "user", "content": "x"}],
        "tierfleet": {"wait_s": 0.1}, "temperature": 2, "top_p": 0, "presence_penalty": -2,
        "frequency_penalty": 2, "logit_bias": {"50256": -100}, "seed": -7, "stop": "END",
        "user": "u-1", "logprobs": False, "top_logprobs": 0, "metadata": {"x": "y"},
        "store": False, "service_tier": "auto"})
    assert resp.status_code == 504, resp.text  # admitted: local-gpu has no worker here
    resp = client.post("/v1/chat/completions", headers=AUTH, json={
        "model": "tier:local-gpu", "messages": [{"role": "user", "content": "x"}],
        "tierfleet": {"wait_s": 0.1}, "stop": ["a", "b", "c", "d"], "seed": None,
        "temperature": None})
    assert resp.status_code == 504, resp.text
    for choice in ("required", {"type": "function", "function": {"name": "f"}}):
        resp = client.post("/v1/chat/completions", headers=AUTH, json={
            "model": "tier:local-gpu", "messages": [{"role": "user", "content": "x"}],
            "tierfleet": {"wait_s": 0.1}, "tool_choice": choice,
            "tools": [{"type": "function", "function": {"name": "f"}}]})
        assert resp.status_code == 504, resp.text


def test_status_never_shows_a_confidential_jobs_words(client: TestClient,
                                                      dispatcher: Dispatcher) -> None:
    """/v1/status answers every producer: a dead letter's reason (a host's error can
    quote the job) is scrubbed of a confidential job's words, as a parked one's is."""
    secret = "Quarterly merger with Globex at 41 dollars"
    for jid, privacy in (("dead-secret", "confidential"), ("dead-plain", "internal")):
        job = Job(id=jid, kind=Kind.SUMMARY, prompt=secret, privacy=Privacy(privacy))
        route = Route(tier="local-mac", kind=Kind.SUMMARY)
        Parking(dispatcher.redis, dispatcher.config).bury(Delivery(job=job, route=route),
                                f"gave up after 3 parks: host said: cannot summarise {secret!r}")
    # The caller's own jobs (a named producer's status lists no one else's).
    Owners(dispatcher.redis, dispatcher.config).claim("beta", ["dead-secret", "dead-plain"])
    status = client.get("/v1/status", headers=AUTH)
    assert status.status_code == 200
    reasons = {d["id"]: d["reason"] for d in status.json()["dead_letters"]}
    assert "Globex" not in reasons["dead-secret"] and "merger" not in reasons["dead-secret"]
    assert reasons["dead-secret"].startswith("gave up after 3 parks")
    assert "Globex" in reasons["dead-plain"]  # only a confidential job's words are scrubbed
