"""Structured output and tools below the API: the schema check on answers, the tools
policy stage, the backends' wire bodies, and the simulated hosts' deterministic answers."""

from __future__ import annotations

import json
import random

from tierfleet.backends.base import ChatMessage, Completion, CompletionRequest
from tierfleet.backends.ollama import OllamaBackend, from_ollama_call, to_ollama_call
from tierfleet.backends.openai_compat import OpenAICompatBackend
from tierfleet.config import FleetConfig, HostConfig, ModelConfig
from tierfleet.jobs import Job, Kind
from tierfleet.lab.sim.answers import compose
from tierfleet.lab.sim.structured import instance_for
from tierfleet.policy import Policy
from tierfleet.quality import check

SCHEMA = {"type": "object", "required": ["city", "days"], "additionalProperties": False,
          "properties": {"city": {"type": "string"},
                         "days": {"type": "integer", "minimum": 1, "maximum": 9}}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def _completion(text: str, **kw: object) -> Completion:
    return Completion(text=text, model="m", host="h", finish_reason="stop", **kw)  # type: ignore[arg-type]


def test_an_answer_off_the_schema_is_not_kept() -> None:
    job = Job(kind=Kind.EXTRACTION, prompt="x", json_output=True, json_schema=SCHEMA)
    assert check(job, _completion('{"city": "Oslo", "days": 3}')).ok
    bad = check(job, _completion('{"city": "Oslo"}'))
    assert not bad.ok and "schema" in bad.reason
    assert not check(job, _completion("not json")).ok


def test_a_tool_call_is_an_answer_when_its_arguments_are_json() -> None:
    job = Job(kind=Kind.CHAT, prompt="weather?", tools=[WEATHER])
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather",
                                                        "arguments": '{"city": "Oslo"}'}}
    assert check(job, _completion("", tool_calls=[call])).ok
    broken = {**call, "function": {"name": "get_weather", "arguments": "{oops"}}
    assert not check(job, _completion("", tool_calls=[broken])).ok


def _two_tier_config(tools_on_small: bool) -> FleetConfig:
    return FleetConfig(
        tiers={"rules": {"place": "rules"},
               "local-mac": {"place": "local", "models": {"default": "tiny"}},
               "paid": {"place": "paid", "models": {"default": "big"}}},
        hosts={"mac": HostConfig(kind="ollama", url="http://127.0.0.1:9", tier="local-mac",
                                 models=["tiny"]),
               "p": HostConfig(kind="openai", url="http://127.0.0.1:9/v1", tier="paid",
                               models=["big"])},
        models={"tiny": ModelConfig(tools=tools_on_small),
                "big": ModelConfig(input_per_mtok=1, output_per_mtok=2)},
        policy={"kind_tiers": {"chat": "local-mac"}, "classifier": "keyword"},
    )


def test_a_tier_whose_model_cannot_call_tools_is_not_chosen() -> None:
    job = Job(kind=Kind.CHAT, prompt="What is the weather in Oslo?", tools=[WEATHER])
    route = Policy(_two_tier_config(tools_on_small=False)).route(job)
    assert route.tier == "paid"
    assert any(r.stage == "constraints" and "cannot call tools" in r.text for r in route.reasons)
    assert Policy(_two_tier_config(tools_on_small=True)).route(job).tier == "local-mac"
    no_tools = job.model_copy(update={"tool_choice": "none"})
    assert Policy(_two_tier_config(tools_on_small=False)).route(no_tools).tier == "local-mac"


def _request(**kw: object) -> CompletionRequest:
    msgs = [ChatMessage(role="user", content="weather in Oslo?"),
            ChatMessage(role="assistant", content="", tool_calls=[{
                "id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]),
            ChatMessage(role="tool", content='{"temp": 3}', tool_call_id="call_1")]
    return CompletionRequest(model="m", messages=msgs, tools=[WEATHER], **kw)  # type: ignore[arg-type]


def test_ollama_body_carries_tools_schema_and_tool_turns() -> None:
    backend = OllamaBackend("mac", HostConfig(kind="ollama", url="http://127.0.0.1:9",
                                              tier="t", models=["m"]))
    body = backend._body(_request(json_schema=SCHEMA, json_output=True))
    assert body["format"] == SCHEMA and body["tools"] == [WEATHER]
    assert body["messages"][1]["tool_calls"] == [
        {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]
    assert body["messages"][2] == {"role": "tool", "content": '{"temp": 3}',
                                   "tool_name": "get_weather"}
    assert "tools" not in backend._body(_request(tool_choice="none"))
    call = from_ollama_call({"function": {"name": "f", "arguments": {"a": 1}}}, 0)
    assert call == {"id": "call_0", "type": "function",
                    "function": {"name": "f", "arguments": '{"a": 1}'}}
    assert to_ollama_call(call)["function"]["arguments"] == {"a": 1}


def test_openai_body_carries_tools_schema_and_tool_turns() -> None:
    backend = OpenAICompatBackend("p", HostConfig(kind="openai", url="http://127.0.0.1:9/v1",
                                                  tier="t", models=["m"]))
    body = backend._body(_request(json_schema=SCHEMA, tool_choice="required"))
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == SCHEMA
    assert body["tools"] == [WEATHER] and body["tool_choice"] == "required"
    assert body["messages"][1]["content"] is None
    assert body["messages"][1]["tool_calls"][0]["id"] == "call_1"
    assert body["messages"][2] == {"role": "tool", "content": '{"temp": 3}',
                                   "tool_call_id": "call_1"}


def test_simulated_answers_meet_schemas_and_call_tools_deterministically() -> None:
    msgs = [{"role": "user", "content": "Plan a trip to Oslo for a few days"}]
    a = compose("qwen3:4b", msgs, json_output=True, schema=SCHEMA)
    assert a == compose("qwen3:4b", msgs, json_output=True, schema=SCHEMA)
    value = json.loads(a.text)
    assert set(value) == {"city", "days"} and 1 <= value["days"] <= 9
    called = compose("qwen3:4b", msgs, tools=[WEATHER])
    assert called.tool_call is not None and called.tool_call[0] == "get_weather"
    assert isinstance(called.tool_call[1]["city"], str) and called.finish_reason == "tool_calls"
    answered = compose("qwen3:4b", [*msgs, {"role": "tool", "content": "3 degrees"}],
                       tools=[WEATHER])
    assert answered.tool_call is None and "3 degrees" in answered.text
    # pydantic's schemas put nested models in $defs.
    nested = {"$defs": {"Step": {"type": "object", "properties": {"n": {"type": "integer"}}}},
              "type": "object", "properties": {"steps": {"type": "array",
                                                         "items": {"$ref": "#/$defs/Step"}}}}
    got = instance_for(nested, random.Random(1), ["x"])
    assert isinstance(got["steps"][0]["n"], int)
