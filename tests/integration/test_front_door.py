"""The OpenAI-compatible front door as real clients use it: the official ``openai`` SDK
(sync and async), ``httpx`` reading the event stream, against a real fleet: a private
redis-server, simulated hosts on loopback (Ollama NDJSON, OpenAI SSE) and Celery
worker subprocesses."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
import redis
import uvicorn

from tests.support.fleets import api_fleet
from tests.support.harness import Worker, write_config
from tierfleet.api import create_app
from tierfleet.config import FleetConfig, load_config
from tierfleet.lab.embedded import EmbeddedRedis
from tierfleet.lab.processes import free_port
from tierfleet.lab.sim.fleet import SimFleet
from tierfleet.ledger import Ledger

pytestmark = pytest.mark.integration

TOKENS = ["tok-front-0123456789"]


@dataclass
class Fleet:
    config: FleetConfig
    client: redis.Redis
    server: EmbeddedRedis
    sim: SimFleet
    base_url: str = ""
    workers: list[Worker] = field(default_factory=list)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    folder = tmp_path_factory.mktemp("front-fleet")
    server = EmbeddedRedis().start()
    body = api_fleet().format(mac=free_port(), gpu=free_port(), cloud=free_port())
    path = write_config(folder / "fleet.toml", server.url, body)
    config = load_config(path)
    sim = SimFleet.from_config(config, scale=0.0, admin_port=None, names=["mac", "cloud"]).start()
    f = Fleet(config=config, server=server, sim=sim,
              client=redis.Redis.from_url(server.url, decode_responses=True))
    app = create_app(config, tokens=TOKENS)
    port = free_port()
    userver = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                            log_level="warning"))
    thread = threading.Thread(target=userver.run, daemon=True)
    try:
        f.workers.append(Worker("local-mac", path, concurrency=4).start(f.client))
        f.workers.append(Worker("paid", path).start(f.client))
        thread.start()
        deadline = time.monotonic() + 20
        while not userver.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        f.base_url = f"http://127.0.0.1:{port}"
        yield f
    finally:
        userver.should_exit = True
        thread.join(timeout=10)
        for w in f.workers:
            w.stop()
        sim.stop()
        f.client.close()
        server.stop()


def sdk(fleet: Fleet, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{fleet.base_url}/v1", api_key=TOKENS[0],
                         **{"max_retries": 0, "timeout": 60, **kw})


class FirstTwoTriesTimeOut(httpx.HTTPTransport):
    """A client whose first two tries of every request give up after 50 ms, as an
    impatient client (or a flaky network) does: the SDK then retries on its own. An
    answer that does come back in time is dropped as if it had been lost on the way."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("x-stainless-retry-count", "0") not in ("0", "1"):
            return super().handle_request(request)
        request.extensions["timeout"] = {"connect": 5.0, "read": 0.05, "write": 5.0,
                                         "pool": 5.0}
        response = super().handle_request(request)
        response.close()
        raise httpx.ReadTimeout("answer lost on the way (test)", request=request)


# -- 1. idempotent retries ---------------------------------------------------------------


def test_sdk_retries_make_no_second_job(fleet: Fleet) -> None:
    """100 requests, each timed out twice by the client and retried by the SDK: 100 jobs,
    100 ledger "ok" records, 100 calls at the host."""
    host = fleet.sim.host("mac")
    host.set_fault("slow", seconds=0.3)  # every answer outlives the first two tries
    calls_before = fleet.sim.counters("mac").get("chat", 0)
    started = time.time()
    client = sdk(fleet, max_retries=2, http_client=httpx.Client(transport=FirstTwoTriesTimeOut()))
    seen_retries: list[int] = []

    def ask(i: int) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model="tier:local-mac",
            messages=[{"role": "user", "content": f"Retry test number {i}: say hi."}])
        seen_retries.append(raw.retries_taken)
        return str((raw.parse().model_extra or {})["tierfleet"]["job_id"])

    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            job_ids = list(pool.map(ask, range(100)))
    finally:
        host.clear("slow")
    assert seen_retries == [2] * 100  # every answer came on the third try
    assert len(set(job_ids)) == 100
    records = Ledger(fleet.client, fleet.config).raw_between(started - 1, time.time() + 1)
    assert len(records) == 100
    assert {r["outcome"] for r in records} == {"ok"}
    assert {r["job_id"] for r in records} == set(job_ids)
    assert fleet.sim.counters("mac").get("chat", 0) - calls_before == 100


# -- 2. honest fields --------------------------------------------------------------------


def test_a_cut_answer_is_length_with_the_hosts_counts(fleet: Fleet) -> None:
    completion = sdk(fleet).chat.completions.create(
        model="tier:local-mac", max_tokens=5,
        messages=[{"role": "user", "content": "Write a long story about the sea, please."}])
    assert completion.choices[0].finish_reason == "length", completion
    assert completion.model == "qwen3:4b"
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    info = (completion.model_extra or {})["tierfleet"]
    assert info["tier"] == "local-mac" and info["host"] == "mac" and info["fallbacks"] == []
    assert info["reasons"]


def test_models_through_the_sdk(fleet: Fleet) -> None:
    ids = [m.id for m in sdk(fleet).models.list()]
    assert ids[0] == "auto" and "qwen3:4b" in ids and "tier:paid" in ids
