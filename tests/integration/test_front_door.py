"""The OpenAI-compatible front door as real clients use it: the official ``openai`` SDK
(sync and async), ``httpx`` reading the event stream, against a real fleet: a private
redis-server, simulated hosts on loopback (Ollama NDJSON, OpenAI SSE) and Celery
worker subprocesses."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pydantic
import pytest
import redis
import uvicorn

from tests.support.fleets import api_fleet
from tests.support.harness import Worker, write_config
from tests.support.sim_fixtures import sim_keys
from tierfleet.api import create_app
from tierfleet.config import FleetConfig, load_config
from tierfleet.lab.embedded import EmbeddedRedis
from tierfleet.lab.processes import free_port
from tierfleet.lab.sim.fleet import SimFleet
from tierfleet.ledger import Ledger

pytestmark = pytest.mark.integration

TOKENS = ["tok-front-0123456789"]
RUNPOD_TIER = """[tiers.runpod]
place = "rented"
models = {{ default = "qwen3:4b" }}

[hosts.pod]
kind = "runpod"
url = "http://127.0.0.1:{pod}/v2/ep-front"
tier = "runpod"
models = ["qwen3:4b"]
api_key_env = "TIERFLEET_TEST_RUNPOD_KEY"
simulated = true

"""


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
    keys = sim_keys()  # the Runpod host's key, for the sim, the API and the workers
    keys.__enter__()
    server = EmbeddedRedis().start()
    body = api_fleet().format(mac=free_port(), gpu=free_port(), cloud=free_port())
    # The small model cannot decode to a schema (its answers are checked and escalated),
    # and sees no images here: a simulated vision model waits seconds before its first
    # token, which the streaming tests would spend for nothing. The coder cannot call
    # tools (tool jobs never go there).
    body = body.replace('[models."qwen3:4b"]\nvision = true',
                        '[models."qwen3:4b"]\njson_schema = false')
    body = body.replace('[models."qwen3-coder:30b"]\n', '[models."qwen3-coder:30b"]\ntools = false\n')
    # A Runpod Serverless tier, reached only when pinned (tier:runpod): first among the
    # model tiers, so no escalation lands there.
    body = body.replace('[tiers.local-gpu]', RUNPOD_TIER.format(pod=free_port()) + '[tiers.local-gpu]')
    assert "json_schema = false" in body and "tools = false" in body and "[hosts.pod]" in body
    # A breaker that opens for half a second: a host that died mid-stream is tried again
    # soon after it is back (the mid-stream retry test), not seconds later.
    path = write_config(folder / "fleet.toml", server.url, body, breaker_open_s=0.5)
    config = load_config(path)
    sim = SimFleet.from_config(config, scale=0.0, admin_port=None,
                               names=["mac", "cloud", "pod"]).start()
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
        f.workers.append(Worker("runpod", path).start(f.client))
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
        keys.__exit__(None, None, None)


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
    for name in ("auto", "qwen3:4b", "tier:paid"):
        assert sdk(fleet).models.retrieve(name).id == name
    with pytest.raises(openai.NotFoundError) as nf:
        sdk(fleet).models.retrieve("gpt-4o")
    assert nf.value.code == "model_not_found"


# -- 3. structured output and tools -------------------------------------------------------

WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


class Trip(pydantic.BaseModel):
    city: str
    days: int
    sights: list[str]


@pytest.mark.parametrize(("model", "host"), [("tier:local-mac", "mac"), ("tier:paid", "cloud")])
def test_tool_calls_round_trip_through_both_wire_formats(fleet: Fleet, model: str,
                                                         host: str) -> None:
    client = sdk(fleet)
    question: Any = [{"role": "user", "content": f"What is the weather in Oslo? ({model})"}]
    first = client.chat.completions.create(model=model, messages=question, tools=[WEATHER],
                                           tool_choice="auto")
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    assert (first.model_extra or {})["tierfleet"]["host"] == host
    follow: Any = [*question, choice.message.model_dump(exclude_none=True),
                   {"role": "tool", "tool_call_id": call.id, "content": "3 degrees and snow"}]
    second = client.chat.completions.create(model=model, messages=follow, tools=[WEATHER])
    assert second.choices[0].finish_reason == "stop"
    assert "3 degrees and snow" in (second.choices[0].message.content or "")
    sent = [r["body"] for r in fleet.sim.requests(host) if "tools" in (r["body"] or {})]
    assert sent and sent[-1]["tools"][0]["function"]["name"] == "get_weather"


def test_a_tools_job_skips_the_tier_that_cannot_call_tools(fleet: Fleet) -> None:
    raw = sdk(fleet).chat.completions.with_raw_response.create(
        model="auto", tools=[WEATHER],
        messages=[{"role": "user", "content": "Refactor this code, then check the weather"}],
        extra_body={"tierfleet": {"kind": "code"}})
    info = (raw.parse().model_extra or {})["tierfleet"]
    assert info["tier"] != "local-gpu"
    assert any("cannot call tools" in r for r in info["reasons"])


def test_parse_validates_the_schema_and_escalates_an_invalid_answer(fleet: Fleet) -> None:
    parsed = sdk(fleet).beta.chat.completions.parse(
        model="auto", response_format=Trip,
        messages=[{"role": "user", "content": "Plan a short trip to Lisbon with sights"}])
    trip = parsed.choices[0].message.parsed
    assert isinstance(trip, Trip) and trip.sights
    info = (parsed.model_extra or {})["tierfleet"]
    # local-mac cannot decode to a schema: its plain JSON failed the check, paid answered.
    assert info["fallbacks"] == ["local-mac"] and info["tier"] == "paid"
    assert any("JSON schema" in r for r in info["reasons"])
    sent = fleet.sim.requests("cloud")[-1]["body"]
    assert sent["response_format"]["type"] == "json_schema"


def test_async_sdk_parse_on_a_host_that_constrains(fleet: Fleet) -> None:
    async def go() -> Trip | None:
        client = openai.AsyncOpenAI(base_url=f"{fleet.base_url}/v1", api_key=TOKENS[0],
                                    max_retries=0)
        done = await client.beta.chat.completions.parse(
            model="tier:paid", response_format=Trip,
            messages=[{"role": "user", "content": "A trip to Porto"}])
        await client.close()
        return done.choices[0].message.parsed

    assert isinstance(asyncio.run(go()), Trip)


# -- 4. true streaming through the queue ----------------------------------------------------


@pytest.fixture
def slow_mac(fleet: Fleet) -> Iterator[Any]:
    """The mac host at a speed where tokens are spread out (scale 5: ~8 ms a token, the
    first after about a second)."""
    host = fleet.sim.host("mac")
    host.scale = 5.0
    yield host
    host.scale = 0.0
    if not host.is_up:
        host.up()


def test_stream_relays_tokens_as_the_host_makes_them(fleet: Fleet, slow_mac: Any) -> None:
    stream = sdk(fleet).chat.completions.create(
        model="tier:local-mac", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Stream me a greeting for the operators."}])
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 5  # token by token, not one blob at the end
    text = "".join(pieces)
    assert text.startswith("[simulated qwen3:4b]")
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 5
    job_id = chunks[0].id.removeprefix("chatcmpl-")
    events = fleet.client.xrange(f"tf:stream:{job_id}")
    assert events[0][1]["t"] == "attempt"
    assert "".join(e.get("text", "") for _, e in events) == text
    assert fleet.client.ttl(f"tf:stream:{job_id}") > 0


def test_stream_read_with_httpx_from_an_openai_host(fleet: Fleet) -> None:
    body = {"model": "tier:paid", "stream": True,
            "messages": [{"role": "user", "content": "Say hello from the paid tier."}]}
    with httpx.stream("POST", f"{fleet.base_url}/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {TOKENS[0]}"}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        data = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert "[simulated gpt-test]" in "".join(c["choices"][0]["delta"].get("content") or ""
                                              for c in chunks)


def test_a_retry_after_tokens_ends_the_stream_with_an_error(fleet: Fleet,
                                                            slow_mac: Any) -> None:
    """The host dies after 3 tokens and is back a moment later: the job's next attempt
    would start a second answer, so the client's stream ends with an error instead, and
    the job still finishes (its answer is at GET /v1/jobs/{id})."""
    stream = sdk(fleet).chat.completions.create(
        model="tier:local-mac", stream=True,
        messages=[{"role": "user", "content": "Tell the operators a long greeting story."}])
    got: list[str] = []
    job_id = ""
    with pytest.raises(openai.APIError) as info:
        for c in stream:
            job_id = c.id.removeprefix("chatcmpl-")
            if c.choices and c.choices[0].delta.content:
                got.append(c.choices[0].delta.content)
                if len(got) == 3:
                    fleet.sim.down("mac")  # the host dies mid-answer...
                    threading.Timer(1.0, fleet.sim.up, args=("mac",)).start()  # ...and returns
    # Tokens the host made before it went down may follow the third (the client reads
    # behind the relay); then the error, never a second answer.
    assert len(got) >= 3 and "moved to another attempt" in str(info.value)
    res = httpx.get(f"{fleet.base_url}/v1/jobs/{job_id}?wait=60", timeout=90,
                    headers={"Authorization": f"Bearer {TOKENS[0]}"}).json()
    assert res["status"] == "succeeded"
    kinds = [e["t"] for _, e in fleet.client.xrange(f"tf:stream:{job_id}")]
    assert kinds.count("attempt") >= 2


def test_stream_from_runpods_stream_endpoint(fleet: Fleet) -> None:
    """A Runpod Serverless job streams: the worker polls ``/stream/{id}`` and its pieces
    reach the SDK as chunks, the first before the job is done."""
    host = fleet.sim.host("pod")
    host.scale = 2.0  # ~3 ms a token: several /stream polls each bring some
    calls_before = fleet.sim.counters("pod").get("stream", 0)
    try:
        stream = sdk(fleet).chat.completions.create(
            model="tier:runpod", stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "Stream a greeting from the rented GPU."}])
        chunks = []
        done_at_first = None
        for c in stream:
            chunks.append(c)
            if done_at_first is None and c.choices and c.choices[0].delta.content:
                job_id = c.id.removeprefix("chatcmpl-")
                raw = fleet.client.get(f"tf:result:{job_id}")
                done_at_first = json.loads(raw)["status"] if raw else "pending"
    finally:
        host.scale = 0.0
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 5 and "".join(pieces).startswith("[simulated qwen3:4b]")
    assert done_at_first != "succeeded"  # the first piece came while the job still ran
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 5
    info_job = chunks[0].id.removeprefix("chatcmpl-")
    res = httpx.get(f"{fleet.base_url}/v1/jobs/{info_job}", timeout=30,
                    headers={"Authorization": f"Bearer {TOKENS[0]}"}).json()
    assert res["status"] == "succeeded" and res["tier"] == "runpod"
    assert fleet.sim.counters("pod").get("stream", 0) - calls_before > 2
    events = fleet.client.xrange(f"tf:stream:{info_job}")
    assert "".join(e.get("text", "") for _, e in events) == "".join(pieces)


# -- 5. a framework on top of the SDK ---------------------------------------------------------


def test_langchain_chat_openai_invokes_streams_and_calls_tools(fleet: Fleet,
                                                               slow_mac: Any) -> None:
    """LangChain's ``ChatOpenAI`` pointed at the fleet: a plain call with the host's
    counts, a stream token by token, and a bound tool coming back as a tool call."""
    from langchain_core.messages import AIMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{fleet.base_url}/v1", api_key=TOKENS[0],  # type: ignore[arg-type]
                     model="tier:local-mac", max_retries=0, timeout=60)
    said = llm.invoke("Greet the operators from LangChain, please.")
    assert isinstance(said, AIMessage) and str(said.content).startswith("[simulated qwen3:4b]")
    assert said.response_metadata["finish_reason"] == "stop"
    assert said.response_metadata["model_name"] == "qwen3:4b"
    assert said.usage_metadata is not None and said.usage_metadata["output_tokens"] > 0
    pieces = [str(c.content) for c in llm.stream("Stream a LangChain greeting, please.")
              if c.content]
    assert len(pieces) > 5 and "".join(pieces).startswith("[simulated qwen3:4b]")
    called = llm.bind_tools([WEATHER]).invoke("What is the weather in Oslo?")
    assert isinstance(called, AIMessage) and called.tool_calls
    assert called.tool_calls[0]["name"] == "get_weather"
    assert isinstance(called.tool_calls[0]["args"]["city"], str)
