"""Retried chat requests attach to their first job: Idempotency-Key, producer ids, SDK retries."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.unit.api.conftest import AUTH, OTHER_AUTH, error_of
from tierfleet.api import retries
from tierfleet.config import FleetConfig
from tierfleet.dispatch import Dispatcher
from tierfleet.jobs import Result, Status

# local-gpu has no worker in these tests: every job stays pending, each request is a 504.
BODY: dict[str, Any] = {"model": "tier:local-gpu",
                        "messages": [{"role": "user", "content": "refactor this"}],
                        "tierfleet": {"wait_s": 0.2}}


def _job_of(resp: Any) -> str:
    assert resp.status_code == 504, resp.text
    return str(error_of(resp)["job_id"])



def test_idempotency_key_names_one_job_per_producer(client: TestClient,
                                                 dispatcher: Dispatcher) -> None:
    first = _job_of(client.post("/v1/chat/completions", json=BODY,
                                headers={**AUTH, "Idempotency-Key": "k-1"}))
    again = _job_of(client.post("/v1/chat/completions", json=BODY,
                                headers={**AUTH, "Idempotency-Key": "k-1"}))
    assert first == again and first.startswith("idem-")
    # Another producer's same key is another job.
    other = _job_of(client.post("/v1/chat/completions", json=BODY,
                                headers={**OTHER_AUTH, "Idempotency-Key": "k-1"}))
    assert other != first
    # The same key with another body is refused, and never as a 409 (the SDK retries 409).
    changed = {**BODY, "messages": [{"role": "user", "content": "something else"}]}
    resp = client.post("/v1/chat/completions", json=changed,
                       headers={**AUTH, "Idempotency-Key": "k-1"})
    assert resp.status_code == 422
    assert error_of(resp)["code"] == "idempotency_key_reused"


def test_sdk_retry_attaches_to_the_first_try_and_a_first_try_does_not(
        client: TestClient) -> None:
    first = _job_of(client.post("/v1/chat/completions", json=BODY, headers=AUTH))
    retried = [_job_of(client.post("/v1/chat/completions", json=BODY,
                                   headers={**AUTH, "x-stainless-retry-count": str(n)}))
               for n in (1, 2)]
    assert retried == [first, first]
    # Someone else asking the same thing, unmarked, is a new job...
    assert _job_of(client.post("/v1/chat/completions", json=BODY, headers=AUTH)) != first
    # ...and so is a retry from another token, or of another body.
    other = _job_of(client.post("/v1/chat/completions", json=BODY,
                                headers={**OTHER_AUTH, "x-stainless-retry-count": "1"}))
    assert other != first
    changed = {**BODY, "messages": [{"role": "user", "content": "refactor that"}]}
    assert _job_of(client.post("/v1/chat/completions", json=changed,
                               headers={**AUTH, "x-stainless-retry-count": "1"})) != first


def test_a_producer_id_is_the_job_id(client: TestClient) -> None:
    body = {**BODY, "tierfleet": {"wait_s": 0.2, "id": "my-job-7"}}
    assert _job_of(client.post("/v1/chat/completions", json=body, headers=AUTH)) == "my-job-7"
    assert _job_of(client.post("/v1/chat/completions", json=BODY,
                               headers={**AUTH, "X-Tierfleet-Job-Id": "my-job-8"})) == "my-job-8"


def test_retry_count_parsing_and_fingerprint_order() -> None:
    assert retries.retry_count({"x-stainless-retry-count": "2"}) == 2
    assert retries.retry_count({"x-stainless-retry-count": "junk"}) == 0
    assert retries.retry_count({}) == 0
    assert retries.fingerprint("t", {"a": 1, "b": 2}) == retries.fingerprint("t", {"b": 2, "a": 1})
    assert retries.fingerprint("t", {"a": 1}) != retries.fingerprint("u", {"a": 1})


def test_default_wait_is_the_sdks_timeout(config: FleetConfig) -> None:
    assert config.api.wait_timeout_s == 600


def test_a_reused_key_never_gets_the_other_requests_answer(client: TestClient,
                                                           dispatcher: Dispatcher) -> None:
    """Once the first job is final its answer is stored; a second body under the same
    Idempotency-Key (or producer id) is refused as while it ran, never handed that answer."""
    first = _job_of(client.post("/v1/chat/completions", json=BODY,
                                headers={**AUTH, "Idempotency-Key": "k-done"}))
    dispatcher.results.save(Result(job_id=first, status=Status.SUCCEEDED, tier="local-gpu",
                                   text="the answer to the first question"))
    same = client.post("/v1/chat/completions", json=BODY,
                       headers={**AUTH, "Idempotency-Key": "k-done"})
    assert same.status_code == 200, same.text  # the retry gets the stored answer
    assert same.json()["choices"][0]["message"]["content"] == "the answer to the first question"
    changed = {**BODY, "messages": [{"role": "user", "content": "a different question"}]}
    for extra in ({"Idempotency-Key": "k-done"}, {}):
        body = changed if extra else {**changed, "tierfleet": {"wait_s": 0.2, "id": first}}
        resp = client.post("/v1/chat/completions", json=body, headers={**AUTH, **extra})
        assert resp.status_code == 422, resp.text
        err = error_of(resp)
        assert err["code"] == ("idempotency_key_reused" if extra else "job_rejected")
        assert "first question" not in resp.text
    # A rules job's id named by a chat request is another body too.
    client.post("/v1/jobs", json={"id": "rules-7", "kind": "dedupe",
                                  "input": {"items": ["a", "a"]}}, headers=AUTH)
    dispatcher.results.save(Result(job_id="rules-7", status=Status.SUCCEEDED, kind="dedupe",
                                   tier="rules", output={"items": ["a"]}))
    resp = client.post("/v1/chat/completions", json=BODY,
                       headers={**AUTH, "X-Tierfleet-Job-Id": "rules-7"})
    assert resp.status_code == 422 and error_of(resp)["param"] == "id"


def test_a_blank_idempotency_key_is_no_key(client: TestClient) -> None:
    one = _job_of(client.post("/v1/chat/completions", json=BODY, headers={**AUTH, "Idempotency-Key": "  "}))
    changed = {**BODY, "messages": [{"role": "user", "content": "something else"}]}
    two = _job_of(client.post("/v1/chat/completions", json=changed,
                              headers={**AUTH, "Idempotency-Key": "  "}))
    assert one != two and not one.startswith("idem-")
