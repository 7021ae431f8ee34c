"""The OpenAI-compatible endpoint: ``POST /v1/chat/completions`` routed through the fleet.

Chat completions. ``model`` picks the place:

- ``"auto"`` (or ``"tierfleet"``): the routing policy chooses, as for any job;
- a model named in the config's ``[models]`` (``"qwen3:4b"``): a tier serving
  it that the job's privacy allows (the policy picks among several);
- a tier: ``"tier:local-gpu"``, or the bare tier name when no model has that name.

A model or tier the job's privacy forbids (a confidential job asking for the
paid tier) is refused with 422 ``privacy_forbids`` rather than silently moved;
unknown names get OpenAI's 404 ``model_not_found``. Job tags go in a
``tierfleet`` object in the body (``extra_body={"tierfleet": {"privacy":
"confidential", "workflow": "support", "risk": "high"}}`` in the OpenAI SDK) or
in ``X-Tierfleet-Privacy``/``-Risk``/``-Workflow``/``-Kind``/``-Session``/
``-User-Tier``/``-Job-Id`` headers; the body wins over a header. OpenAI
parameters the fleet has no use for (temperature, top_p, seed, ...) are
checked against OpenAI's ranges and ignored (``logprobs`` and ``n`` > 1, which
would change the answer's shape, are refused); ``max_tokens``/``max_completion_tokens`` and
``response_format`` (JSON) are honoured; ``stream: true`` is answered as a
server-sent-event stream of the host's tokens as they come (:mod:`.streaming`). The call waits up to
``api.wait_timeout_s`` (or ``tierfleet.wait_s``, never longer); on timeout it
answers 504 with the job id (``error.job_id`` and ``x-tierfleet-job-id``) so
the caller can poll ``GET /v1/jobs/{id}``. Retries never run twice
(:mod:`.retries`): an ``Idempotency-Key`` header or a producer-set job id
(``tierfleet.id``, ``X-Tierfleet-Job-Id``) names the job, and a request the
OpenAI SDK marks as a retry (``x-stainless-retry-count``) with the same body and
token as a recent one attaches to the first try's job; a finished job's stored
answer is returned instead of a second run. The default wait (600 s) is the
SDK's own timeout, so the client, not the API, decides when to give up.
Answers carry ``x-tierfleet-tier``, ``x-tierfleet-route`` (the tiers tried,
``a->b``), ``x-tierfleet-job-id`` and, for simulated hosts,
``x-tierfleet-simulated: 1``; the body adds a ``tierfleet`` object (job id,
tier, host, trail, cost) that OpenAI clients ignore.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, Literal

from fastapi import Body, Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from ..config import FleetConfig
from ..dispatch import Dispatcher, parse_job
from ..errors import JobRejected
from ..inputs import scan
from ..jobs import MODEL_KINDS, TERMINAL, Job, Kind, Privacy, Result, Risk, Status, UserTier
from ..rules import json_validate
from . import retries, streaming
from .errors import ERROR_RESPONSES, ApiError, ErrorResponse
from .tenants import Owners

__all__ = ["ChatCompletion", "ChatCompletionRequest", "add_chat_route", "resolve_target"]

JOB_ID_PATTERN = r"^[\w.:-]+$"
AUTO_MODELS = frozenset({"auto", "tierfleet", "tierfleet/auto"})
_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,(?P<b64>.*)$", re.DOTALL)

# Shown in /docs, and tried first by schemathesis (its "explicit" phase).
CHAT_EXAMPLES: dict[str, Any] = {
    "auto": {"summary": "The policy chooses", "value": {
        "model": "auto", "messages": [{"role": "user", "content": "Say hello."}]}},
    "tagged": {"summary": "Job tags in the tierfleet object", "value": {
        "model": "auto", "temperature": 0.2,
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Classify: printer out of toner"}],
        "tierfleet": {"workflow": "support", "privacy": "confidential", "kind": "classification"}}},
}

class CalledFunction(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    arguments: str


class ToolCallIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = Field(max_length=256)
    type: Literal["function"] = "function"
    function: CalledFunction


class ImageUrl(BaseModel):
    model_config = ConfigDict(extra="allow")

    url: str
    detail: str | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None
    image_url: ImageUrl | None = None


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    # "function" (OpenAI's deprecated predecessor of "tool") is not supported: a 422.
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None  # an assistant turn that called functions
    tool_call_id: str | None = Field(default=None, max_length=256)  # a tool turn's call


class FunctionIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[\w-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    function: FunctionIn


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(default="response", max_length=64)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class TierfleetOptions(BaseModel):
    """Job tags for a chat completion (``extra_body={"tierfleet": {...}}``)."""

    # No NaN/Infinity, even spelled as a string ("inf"): wait_s never reaches the Job's
    # own check, and an infinite wait is no wait a caller means (it held the request to
    # api.wait_timeout_s, 600 s by default).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    id: str | None = Field(default=None, min_length=1, max_length=128, pattern=JOB_ID_PATTERN)
    kind: Kind | None = None
    privacy: Privacy | None = None
    risk: Risk | None = None
    workflow: str | None = Field(default=None, min_length=1, max_length=128)
    user_tier: UserTier | None = None
    session: str | None = Field(default=None, max_length=128)
    latency_budget_s: float | None = Field(default=None, gt=0)
    max_cost_usd: float | None = Field(default=None, ge=0)
    cache: bool | None = None
    metadata: dict[str, str] | None = None
    wait_s: float | None = Field(default=None, gt=0,
                                 description="wait less than api.wait_timeout_s")


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat request; parameters the fleet has no use for are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(default="auto", max_length=256,
                       description='"auto", a configured model, or a tier ("tier:NAME")')
    messages: list[ChatMessageIn] = Field(min_length=1)
    # Strict types for what changes the answer or its shape: OpenAI refuses "yes" for a
    # boolean and true for a count; coerced, a client's bug would look honoured.
    max_tokens: int | None = Field(default=None, gt=0, strict=True)
    max_completion_tokens: int | None = Field(default=None, gt=0, strict=True)
    response_format: ResponseFormat | None = None
    stream: bool | None = Field(default=False, strict=True)
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=1, strict=True, description="only 1 is supported")
    # Sampling parameters the fleet does not pass on, typed with OpenAI's own ranges: a
    # valid one is ignored, a wrong type or an out-of-range value is a 422 naming it, as
    # at OpenAI (ignored silently, a client's bug would look honoured).
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    seed: int | None = Field(default=None, strict=True)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    user: str | None = None
    # No host here returns token log probabilities: asking for them is refused, like n > 1,
    # rather than answered with logprobs null.
    logprobs: bool | None = Field(default=None, strict=True)
    top_logprobs: int | None = Field(default=None, ge=0, le=20, strict=True)
    tools: list[ToolIn] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = Field(default=None, strict=True)
    tierfleet: TierfleetOptions | None = None

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self) -> ChatCompletionRequest:
        # As OpenAI: a choice that forces a tool needs tools, and a named one must be
        # among them (else a host is asked for a call it cannot make).
        choice = self.tool_choice
        if choice in (None, "none", "auto"):
            return self
        names = {t.function.name for t in self.tools or []}
        if not names:
            raise ValueError("tool_choice: forcing a tool call needs 'tools'")
        if isinstance(choice, dict):
            fn = choice.get("function")
            name = fn.get("name") if isinstance(fn, dict) else None
            if choice.get("type") != "function" or not isinstance(name, str):
                raise ValueError('tool_choice: expected {"type": "function", "function": {"name": ...}}')
            if name not in names:
                raise ValueError(f"tool_choice: no tool named {name[:64]!r} in 'tools'")
        return self




class ToolCallFunction(BaseModel):
    name: str
    arguments: str  # a JSON string, as OpenAI sends it


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCallOut] | None = None


class Choice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: str = "stop"
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TierfleetInfo(BaseModel):
    job_id: str
    tier: str | None
    host: str | None
    model: str | None  # the model the fleet asked for (``model`` above is the host's name)
    trail: list[str]
    fallbacks: list[str]  # tiers tried before the one that answered
    reasons: list[str]  # why the job went where it went: dispatcher stages, worker moves
    cost_usd: float
    cache_hit: bool
    simulated: bool
    tokens_estimated: bool


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
    tierfleet: TierfleetInfo



def resolve_target(config: FleetConfig, model: str, privacy: str) -> tuple[str | None, str | None]:
    """(tier, model) a chat request's ``model`` asks for; (None, None) lets the policy choose."""
    name = model.strip()
    if name.lower() in AUTO_MODELS or not name:
        return None, None
    tier: str | None = None
    if name.startswith("tier:"):
        tier = name.removeprefix("tier:")
        if tier not in config.tiers:
            raise ApiError(404, f"unknown tier {tier!r}; known: {', '.join(config.tiers)}",
                           code="model_not_found", param="model")
    elif name in config.models:
        serving = [t for t in config.tiers
                   if any(name in h.models for h in config.hosts_for(t).values())]
        if not serving:
            raise ApiError(404, f"no host in the fleet serves model {name!r}",
                           code="model_not_found", param="model")
        if not any(config.tier_allowed(t, privacy) for t in serving):
            raise ApiError(422, f"model {name!r} runs only on {', '.join(serving)}, which "
                           f"privacy={privacy} does not allow", code="privacy_forbids",
                           param="model")
        # The policy picks among the allowed tiers serving it (load, cost) and says why.
        return None, name
    elif name in config.tiers:
        tier = name
    else:
        raise ApiError(404, f"The model {name!r} does not exist in this fleet; use \"auto\", a "
                       "configured model or \"tier:NAME\"", code="model_not_found", param="model")
    if config.tiers[tier].place == "rules":
        raise ApiError(422, f"tier {tier!r} runs rules, not a model: it cannot answer a chat",
                       code="invalid_value", param="model")
    if not config.tier_allowed(tier, privacy):
        raise ApiError(422, f"privacy={privacy} does not allow tier {tier!r}",
                       code="privacy_forbids", param="model")
    return tier, None


def _convert_messages(messages: list[ChatMessageIn]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        role = "system" if m.role == "developer" else m.role
        texts: list[str] = []
        images: list[str] = []
        if isinstance(m.content, str):
            texts.append(m.content)
        elif m.content is None:
            if not m.tool_calls:  # OpenAI sends null content beside tool calls
                raise ApiError(422, "message content is missing", code="invalid_value",
                               param=f"messages.{i}.content")
        else:
            for j, part in enumerate(m.content):
                where = f"messages.{i}.content.{j}"
                if part.type == "text" and part.text is not None:
                    texts.append(part.text)
                elif part.type == "image_url" and part.image_url is not None:
                    images.append(_image_b64(part.image_url.url, where))
                else:
                    raise ApiError(422, f"unsupported content part {part.type!r} (text and "
                                   "image_url are)", code="unsupported_value", param=where)
        msg: dict[str, Any] = {"role": role, "content": "\n".join(texts), "images": images}
        if m.tool_calls:
            msg["tool_calls"] = [c.model_dump(mode="json") for c in m.tool_calls]
        if m.role == "tool":
            if not m.tool_call_id:
                raise ApiError(422, "a tool message needs the tool_call_id it answers",
                               code="invalid_value", param=f"messages.{i}.tool_call_id")
            msg["tool_call_id"] = m.tool_call_id
        out.append(msg)
    if not any(m["content"].strip() or m["images"] for m in out):
        raise ApiError(422, "every message is empty: nothing to answer", code="invalid_value",
                       param="messages")
    return out


def _image_b64(url: str, where: str) -> str:
    match = _DATA_URL.match(url)
    if match is None:
        # Fetching a URL from here would let callers probe the network behind the API.
        raise ApiError(422, "images must be data: URLs (data:image/png;base64,...)",
                       code="unsupported_value", param=f"{where}.image_url.url")
    b64 = re.sub(r"\s+", "", match["b64"])
    try:
        base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "image data is not valid base64", code="invalid_value",
                       param=f"{where}.image_url.url") from None
    if not b64:
        raise ApiError(422, "image data is empty", code="invalid_value",
                       param=f"{where}.image_url.url")
    return b64


def _chat_job(config: FleetConfig, body: ChatCompletionRequest,
              headers: Mapping[str, str | None], *,
              job_id: str | None = None) -> tuple[Job, float | None]:
    """The Job a chat request stands for, and the wait the caller asked for."""
    opts = body.tierfleet.model_dump(exclude_none=True) if body.tierfleet else {}
    wait_s = opts.pop("wait_s", None)
    if job_id is not None:
        opts["id"] = job_id
    for name, value in headers.items():
        if value is not None and name not in opts:
            opts[name] = value
    if body.logprobs or body.top_logprobs:
        raise ApiError(422, "log probabilities are not available from this fleet's hosts",
                       code="unsupported_value",
                       param="logprobs" if body.logprobs else "top_logprobs")
    kind = Kind(opts.pop("kind", Kind.AUTO))
    if kind not in MODEL_KINDS and kind is not Kind.AUTO:
        raise ApiError(422, f"kind {kind.value!r} is a rules kind: submit it to POST /v1/jobs",
                       code="invalid_value", param="tierfleet.kind")
    privacy = str(opts.get("privacy", Privacy.INTERNAL.value))
    tier, model = resolve_target(config, body.model, privacy)
    data: dict[str, Any] = {
        **opts,
        "kind": kind.value,
        "messages": _convert_messages(body.messages),
        "tier": tier,
        "model": model,
        "max_tokens": body.max_completion_tokens or body.max_tokens,
        "stream": bool(body.stream),
        "json_output": bool(body.response_format
                            and body.response_format.type in ("json_object", "json_schema")),
    }
    schema = _json_schema(config, body.response_format)
    if schema is not None:
        data["json_schema"] = schema
    if body.tools:
        data["tools"] = [t.model_dump(mode="json", exclude_none=True) for t in body.tools]
        data["tool_choice"] = body.tool_choice
    if schema is not None or body.tools:
        # The cache keeps text only: no tool calls, and no record of which schema it met.
        data["cache"] = False
    return parse_job(data), wait_s


def _json_schema(config: FleetConfig, fmt: ResponseFormat | None) -> dict[str, Any] | None:
    """The schema of a ``json_schema`` response format, checked as the rules tier checks one."""
    if fmt is None or fmt.type != "json_schema":
        return None
    spec = fmt.json_schema
    if spec is None or spec.schema_ is None:
        raise ApiError(422, "response_format json_schema needs a schema", code="invalid_value",
                       param="response_format.json_schema.schema")
    inp = json_validate.JsonValidateInput(document=None, schema=spec.schema_)
    try:
        json_validate.check(inp, config.limits)
    except JobRejected as exc:
        param = exc.field.replace("input.schema", "response_format.json_schema.schema", 1)
        raise ApiError(422, exc.message, code="invalid_value", param=param) from None
    return spec.schema_


def _result_headers(result: Result) -> dict[str, str]:
    h = {"x-tierfleet-job-id": result.job_id}
    if result.tier:
        h["x-tierfleet-tier"] = result.tier
    if result.trail:
        h["x-tierfleet-route"] = "->".join(result.trail)
    if result.model:
        h["x-tierfleet-model"] = result.model
    if result.simulated:
        h["x-tierfleet-simulated"] = "1"
    return h


def _finish_reason(result: Result) -> str:
    """The host's reason ("length" when cut, "tool_calls" when it called a function)."""
    if result.tool_calls:
        return "tool_calls"
    return result.finish_reason or "stop"


def _completion(result: Result, requested: str) -> ChatCompletion:
    text = result.text if result.text is not None else (
        result.output if isinstance(result.output, str) else json.dumps(result.output))
    calls = [ToolCallOut.model_validate(c) for c in result.tool_calls or []] or None
    return ChatCompletion(
        id=f"chatcmpl-{result.job_id}",
        created=int(time.time()),
        model=(result.served_model or result.model
               or (f"tier:{result.tier}" if result.tier else requested)),
        # OpenAI sends content null beside tool calls; an empty answer stays "".
        choices=[Choice(message=ChatMessageOut(content=(text or None) if calls else (text or ""),
                                               tool_calls=calls),
                        finish_reason=_finish_reason(result))],
        usage=Usage(prompt_tokens=result.tokens_in, completion_tokens=result.tokens_out,
                    total_tokens=result.tokens_in + result.tokens_out),
        tierfleet=TierfleetInfo(
            job_id=result.job_id, tier=result.tier, host=result.host, model=result.model,
            trail=result.trail, fallbacks=result.trail[:-1], reasons=result.reasons,
            cost_usd=result.cost_usd, cache_hit=result.cache_hit, simulated=result.simulated,
            tokens_estimated=result.tokens_estimated,
        ),
    )


def add_chat_route(app: FastAPI, config: FleetConfig, dispatcher: Dispatcher, *,
                   auth: Callable[..., Awaitable[str]], owners: Owners,
                   wait_final: Callable[[str, float], Awaitable[Result | None]]) -> None:
    """Mount ``POST /v1/chat/completions`` on ``app``; ``auth`` names the calling producer,
    ``owners`` keeps whose each job is, ``wait_final`` is the app's result wait."""
    cfg, d = config, dispatcher

    @app.post(
        "/v1/chat/completions", response_model=ChatCompletion, tags=["openai"],
        summary="OpenAI-compatible chat completion routed through the fleet",
        responses={
            **ERROR_RESPONSES,
            200: {"content": {"text/event-stream": {}},
                  "description": "chat.completion, or an event stream when stream=true"},
            404: {"model": ErrorResponse, "description": "unknown model or tier"},
            502: {"model": ErrorResponse, "description": "the job failed at its host"},
            504: {"model": ErrorResponse,
                  "description": "not finished in time; poll GET /v1/jobs/{error.job_id}"},
        },
    )
    async def chat_completions(
        request: Request,
        body: Annotated[ChatCompletionRequest, Body(openapi_examples=CHAT_EXAMPLES)],
        x_tierfleet_privacy: Annotated[Privacy | None, Header()] = None,
        x_tierfleet_risk: Annotated[Risk | None, Header()] = None,
        x_tierfleet_workflow: Annotated[str | None, Header(max_length=128)] = None,
        x_tierfleet_kind: Annotated[Kind | None, Header()] = None,
        x_tierfleet_session: Annotated[str | None, Header(max_length=128)] = None,
        x_tierfleet_user_tier: Annotated[UserTier | None, Header()] = None,
        x_tierfleet_job_id: Annotated[str | None, Header(max_length=128)] = None,
        idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
        producer: str = Depends(auth),
    ) -> Response:
        # The whole body, unknown fields included, before anything serialises it (the
        # retry fingerprint, the job): a lone surrogate, NaN/Infinity or a value nested
        # past the limit is the caller's 422 naming the field, never a 500 or a silent null.
        scan(await request.json(), "", max_depth=cfg.limits.max_json_depth, start_depth=-1)
        headers = {
            "privacy": x_tierfleet_privacy, "risk": x_tierfleet_risk,
            "workflow": x_tierfleet_workflow, "kind": x_tierfleet_kind,
            "session": x_tierfleet_session, "user_tier": x_tierfleet_user_tier,
            "id": x_tierfleet_job_id,
        }
        tags = {k: (v.value if hasattr(v, "value") else v) for k, v in headers.items()}
        header_id = tags.pop("id")
        producer_id = (body.tierfleet.id if body.tierfleet else None) or header_id
        # The fingerprint covers the tags too: a retry carries the same headers.
        ident = await run_in_threadpool(
            retries.identify, d.r, cfg, request.headers,
            {"body": body.model_dump(mode="json"), "tags": tags}, producer_id, producer)
        job, wait_s = _chat_job(cfg, body, tags, job_id=ident.job_id)
        limit = min(wait_s or cfg.api.wait_timeout_s, cfg.api.wait_timeout_s)
        try:
            # Another producer's id is refused before anything is read: its answer, or
            # whether it exists at all, is not this caller's to learn.
            await run_in_threadpool(owners.claim_all, producer, [job.id])
            stored = await run_in_threadpool(d.results.get, job.id)
            if stored is None or stored.status not in TERMINAL:
                # Remembered before the submit, not after: a retry that comes while this try
                # is still being admitted (routing under load can outlast a client's timeout
                # and the SDK's backoff) must find the id, or it would start a second job.
                # Finding it early is safe: the retry submits the same job under the same id.
                await run_in_threadpool(retries.remember, d.r, cfg, ident)
                # One still running is the same job (admission is idempotent by id).
                await run_in_threadpool(d.submit, job)
            elif await run_in_threadpool(d.open.admitted_otherwise, job):
                # A repeated request with the same job id gets the stored answer, not a
                # second run, but only if it is the same request: another body under a
                # reused id must not be handed the other job's answer.
                raise JobRejected("id", f"job {job.id!r} already exists with a different "
                                  "body: give the new job its own id")
        except JobRejected as exc:
            if exc.field == "id" and ident.source == "idempotency-key":
                raise ApiError(422, f"Idempotency-Key {idempotency_key!r} was used for "
                               "another request body", code="idempotency_key_reused",
                               param="idempotency-key") from None
            raise
        if body.stream:
            include = bool(body.stream_options and body.stream_options.include_usage)
            events = streaming.relay(request, d, job.id, model=job.model or body.model,
                                     limit_s=limit, include_usage=include, failure=_failure)
            _, whole = await streaming.primed(events)  # HTTP errors until the first token
            return StreamingResponse(whole, media_type="text/event-stream",
                                     headers={"x-tierfleet-job-id": job.id,
                                              "cache-control": "no-cache"})
        res = await _wait_or_disconnect(request, job.id, limit)
        if res is None or res.status not in TERMINAL:
            raise ApiError(504, f"job {job.id} not finished after {limit:g}s; poll "
                           f"GET /v1/jobs/{job.id}", code="timeout", job_id=job.id,
                           headers={"x-tierfleet-job-id": job.id})
        if res.status is not Status.SUCCEEDED:
            raise _failure(res)
        extra = _result_headers(res)
        completion = _completion(res, body.model)
        return JSONResponse(completion.model_dump(mode="json"), headers=extra)

    def _failure(res: Result) -> ApiError:
        extra = _result_headers(res)
        if res.status is Status.DEAD:
            return ApiError(503, f"job {res.job_id} was given up on: {res.error or 'no tier up'}",
                            code="job_dead", job_id=res.job_id, headers=extra)
        return ApiError(502, f"job {res.job_id} failed: {res.error or 'unknown error'}",
                        code="job_failed", job_id=res.job_id, headers=extra)

    async def _wait_or_disconnect(request: Request, job_id: str, seconds: float) -> Result | None:
        """``wait_final`` in short slices, stopping when the client has hung up: a client
        that timed out will retry (and attach to this job) or has given up; either way
        nobody reads this answer, and holding the slot for 600 s would only waste it."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            res = await wait_final(job_id, max(0.0, min(1.0, left)))
            if res is None or res.status in TERMINAL or left <= 1.0:
                return res
            if await request.is_disconnected():
                return res
