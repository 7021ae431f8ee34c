"""The HTTP API: submit jobs, read results and status, and an OpenAI-compatible chat endpoint.

Why FastAPI (on uvicorn) rather than bare Starlette: every request and answer is
a pydantic model (``Job``, ``Result``, the chat request), so FastAPI validates
bodies with the same models the Python API uses and publishes an OpenAPI schema
for free. That schema is the contract clients generate code from, and the one
schemathesis fuzzes in the tests (no input may produce a 5xx). Starlette alone
would leave both to hand-written code.

Endpoints (all ``/v1`` ones need ``Authorization: Bearer <token>`` when tokens are configured):

- ``POST /v1/jobs``            a Job -> 202 ``{id, route}``
- ``POST /v1/jobs/batch``      ``{"jobs": [Job, ...]}`` -> 202 ``[{id, route}, ...]``
  (all or nothing: a bad job rejects the batch before anything is enqueued)
- ``GET  /v1/jobs/{id}``       the Result; ``?wait=S`` waits up to S s for a final one;
  404 for an unknown id
- ``GET  /v1/status``          queues, workers, hosts and breakers, parked jobs, dead letters
- ``POST /v1/chat/completions`` OpenAI-compatible; waits for the answer (below)
- ``GET  /metrics``            Prometheus text format: fleet-wide (from Redis) plus this
  API process's requests
- ``GET  /healthz``            200 when Redis answers, else 503
- ``GET  /openapi.json``, ``/docs``

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
accepted and ignored; ``max_tokens``/``max_completion_tokens`` and
``response_format`` (JSON) are honoured; ``stream: true`` is answered as a
server-sent-event stream once the job has finished. The call waits up to
``api.wait_timeout_s`` (or ``tierfleet.wait_s``, never longer); on timeout it
answers 504 with the job id (``error.job_id`` and ``x-tierfleet-job-id``) so
the caller can poll ``GET /v1/jobs/{id}``. A request naming a job id
(``tierfleet.id`` or ``X-Tierfleet-Job-Id``) that has already finished gets
the stored answer instead of a second run, so a client may retry safely.
Answers carry ``x-tierfleet-tier``, ``x-tierfleet-route`` (the tiers tried,
``a->b``), ``x-tierfleet-job-id`` and, for simulated hosts,
``x-tierfleet-simulated: 1``; the body adds a ``tierfleet`` object (job id,
tier, host, trail, cost) that OpenAI clients ignore.

Errors always have OpenAI's shape ``{"error": {"message", "type", "code",
"param"}}``; ``param`` names the offending field. 401 bad or missing token,
404 unknown job/model/path, 413 body over ``api.max_body_bytes``, 422 invalid
input (``param`` is the field), 502 the job failed at its host, 503 Redis
unreachable or the job was given up on, 504 not finished in time. Client input
never produces a 500.

Auth. Producer tokens come from the environment variable named by
``api.tokens_env`` (comma separated, so tokens can be rotated) and are compared
with :func:`hmac.compare_digest`. With no token configured the API is open, and
:func:`serve` refuses to listen on anything but loopback unless
``insecure_no_auth`` (``tierfleet api --insecure-no-auth``) says so on purpose.
``/metrics``, ``/healthz`` and the schema stay open for scrapers and probes:
they carry counts, names and states, never prompts or keys.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Annotated, Any, Literal

import redis
from fastapi import Body, Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from kombu.exceptions import OperationalError as KombuOperationalError
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from prometheus_client.registry import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..config import FleetConfig, get_config
from ..dispatch import Dispatcher, Handle, parse_job
from ..errors import ConfigError, JobRejected, NoRoute, ResultTimeout, TierfleetError
from ..jobs import MODEL_KINDS, TERMINAL, Job, Kind, Privacy, Result, Risk, Status, UserTier
from ..metrics import FleetCollector

__all__ = [
    "ChatCompletionRequest",
    "create_app",
    "is_loopback",
    "load_tokens",
    "resolve_target",
    "serve",
]

log = logging.getLogger("tierfleet.api")

JOB_ID_PATTERN = r"^[\w.:-]+$"
FINAL = TERMINAL
AUTO_MODELS = frozenset({"auto", "tierfleet", "tierfleet/auto"})
_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,(?P<b64>.*)$", re.DOTALL)


# -- errors -----------------------------------------------------------------------------


class ErrorBody(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None
    job_id: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape, used by every endpoint."""

    error: ErrorBody


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None,
                 param: str | None = None, type_: str | None = None, job_id: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type_
        self.job_id = job_id
        self.headers = dict(headers or {})


def _default_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 504:
        return "timeout"
    if status in (502, 503):
        return "service_unavailable" if status == 503 else "upstream_error"
    return "invalid_request_error" if status < 500 else "server_error"


def error_response(status: int, message: str, *, code: str | None = None,
                   param: str | None = None, type_: str | None = None,
                   job_id: str | None = None,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    body = ErrorBody(message=message, type=type_ or _default_type(status), code=code,
                     param=param, job_id=job_id)
    return JSONResponse(ErrorResponse(error=body).model_dump(exclude_none=True), status_code=status,
                        headers=dict(headers or {}))


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "missing or wrong bearer token"},
    413: {"model": ErrorResponse, "description": "request body over api.max_body_bytes"},
    422: {"model": ErrorResponse, "description": "invalid input; error.param names the field"},
    503: {"model": ErrorResponse, "description": "Redis unreachable"},
}


def _loc_param(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts)


def _validation_error(errors: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """(param, message) of the first problem, the way the Python API names it."""
    if not errors:
        return "body", "invalid request"
    first = errors[0]
    param = _loc_param(first.get("loc", ()))
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if not param or param.isdigit():
        # A whole-object check (e.g. "prompt: a summary job needs ..."): it names its field.
        head, sep, _ = msg.partition(":")
        param = head if sep and re.fullmatch(r"[\w.]+", head) else (param or "body")
    if first.get("type") == "json_invalid":
        param = "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return param, msg + more


# -- request models -----------------------------------------------------------------------

# Shown in /docs, and tried first by schemathesis (its "explicit" phase).
JOB_EXAMPLES: dict[str, Any] = {
    "rules": {"summary": "A rules job: no model, no cost", "value": {
        "kind": "keyword_route", "input": {"text": "my VPN drops every hour"},
        "workflow": "support-triage"}},
    "model": {"summary": "A model job the policy routes", "value": {
        "kind": "summary", "prompt": "Summarise: the build failed twice, then passed.",
        "workflow": "ci-digest", "privacy": "internal"}},
    "auto": {"summary": "Untyped: the classifier decides the kind", "value": {
        "prompt": "Translate to French: good morning", "workflow": "i18n"}},
}
CHAT_EXAMPLES: dict[str, Any] = {
    "auto": {"summary": "The policy chooses", "value": {
        "model": "auto", "messages": [{"role": "user", "content": "Say hello."}]}},
    "tagged": {"summary": "Job tags in the tierfleet object", "value": {
        "model": "auto", "temperature": 0.2,
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Classify: printer out of toner"}],
        "tierfleet": {"workflow": "support", "privacy": "confidential", "kind": "classification"}}},
}


class JobBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobs: list[Job] = Field(min_length=1)


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

    # Tool and function messages are not supported: the schema says so, and so does a 422.
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"] = "text"


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class TierfleetOptions(BaseModel):
    """Job tags for a chat completion (``extra_body={"tierfleet": {...}}``)."""

    model_config = ConfigDict(extra="forbid")

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
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    response_format: ResponseFormat | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=1, description="only 1 is supported")
    tools: list[Any] | None = None
    tierfleet: TierfleetOptions | None = None


# -- response models ----------------------------------------------------------------------


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


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
    trail: list[str]
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


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    redis: bool


# -- helpers ----------------------------------------------------------------------------


def load_tokens(config: FleetConfig, environ: Mapping[str, str] | None = None) -> list[str]:
    """Producer tokens from the variable named by ``api.tokens_env`` (comma separated)."""
    env = os.environ if environ is None else environ
    raw = env.get(config.api.tokens_env, "")
    return [t.strip() for t in raw.split(",") if t.strip()]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _token_ok(given: str, tokens: Sequence[bytes]) -> bool:
    g = given.encode()
    ok = False
    for t in tokens:  # every token is compared, so timing says nothing about which matched
        ok |= hmac.compare_digest(g, t)
    return ok


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
        out.append({"role": role, "content": "\n".join(texts), "images": images})
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
              headers: Mapping[str, str | None]) -> tuple[Job, float | None]:
    """The Job a chat request stands for, and the wait the caller asked for."""
    opts = body.tierfleet.model_dump(exclude_none=True) if body.tierfleet else {}
    wait_s = opts.pop("wait_s", None)
    for name, value in headers.items():
        if value is not None and name not in opts:
            opts[name] = value
    if body.tools:
        raise ApiError(422, "tool calls are not supported", code="unsupported_value",
                       param="tools")
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
        "json_output": bool(body.response_format
                            and body.response_format.type in ("json_object", "json_schema")),
    }
    return parse_job(data), wait_s


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


def _completion(result: Result, requested: str) -> ChatCompletion:
    text = result.text if result.text is not None else (
        result.output if isinstance(result.output, str) else json.dumps(result.output))
    return ChatCompletion(
        id=f"chatcmpl-{result.job_id}",
        created=int(time.time()),
        model=result.model or (f"tier:{result.tier}" if result.tier else requested),
        choices=[Choice(message=ChatMessageOut(content=text or ""))],
        usage=Usage(prompt_tokens=result.tokens_in, completion_tokens=result.tokens_out,
                    total_tokens=result.tokens_in + result.tokens_out),
        tierfleet=TierfleetInfo(
            job_id=result.job_id, tier=result.tier, host=result.host, trail=result.trail,
            cost_usd=result.cost_usd, cache_hit=result.cache_hit, simulated=result.simulated,
            tokens_estimated=result.tokens_estimated,
        ),
    )


def _sse(completion: ChatCompletion, include_usage: bool) -> list[str]:
    base = {"id": completion.id, "object": "chat.completion.chunk", "created": completion.created,
            "model": completion.model}
    content = completion.choices[0].message.content
    chunks: list[dict[str, Any]] = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": content},
                              "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    if include_usage:
        chunks.append({**base, "choices": [], "usage": completion.usage.model_dump()})
    return [f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]


# -- middleware ---------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    """413 for bodies over the limit, whether announced by Content-Length or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if declared is not None:
            too_big = not declared.isdigit() or int(declared) > self.max_bytes
            if too_big:
                resp = error_response(413, f"request body over {self.max_bytes} bytes",
                                      code="request_too_large")
                await resp(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    # Raised while the endpoint reads its body: the exception
                    # handlers turn it into a 413 before anything was sent.
                    raise StarletteHTTPException(413, f"request body over {self.max_bytes} bytes")
            return msg

        await self.app(scope, limited, send)


class RequestMetrics:
    """Counts this API's requests by route template (not raw path: bounded label values)."""

    def __init__(self, app: ASGIApp, requests: Counter, latency: Histogram) -> None:
        self.app = app
        self.requests = requests
        self.latency = latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]
        t0 = time.perf_counter()

        async def watch(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                status[0] = int(msg["status"])
            await send(msg)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.requests.labels(scope.get("method", "?"), path, str(status[0])).inc()
            self.latency.labels(path).observe(time.perf_counter() - t0)


# -- the app ------------------------------------------------------------------------------


def create_app(config: FleetConfig | None = None, dispatcher: Dispatcher | None = None, *,
               tokens: Sequence[str] | None = None) -> FastAPI:
    """The API for one fleet. ``tokens`` overrides the ones read from the environment."""
    cfg = config or (dispatcher.config if dispatcher is not None else get_config())
    d = dispatcher or Dispatcher(cfg)
    token_list = [t.encode() for t in (load_tokens(cfg) if tokens is None else tokens) if t]

    app = FastAPI(
        title="tierfleet",
        version="1",
        summary="Send every AI job to the cheapest place that can do it well.",
        description=(__doc__ or "").split("\n\n", 1)[0],
        responses={},
    )
    app.state.config = cfg
    app.state.dispatcher = d
    app.state.auth_enabled = bool(token_list)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(d.r, cfg))
    requests_total = Counter("tierfleet_api_requests", "HTTP requests served by this API process",
                             ["method", "route", "status"], registry=registry)
    request_seconds = Histogram("tierfleet_api_request_seconds",
                                "Time this API process took per request", ["route"],
                                registry=registry)
    app.state.registry = registry

    bearer = HTTPBearer(auto_error=False, description="a producer token (api.tokens_env)")

    # A plain default, not Annotated[..., Depends(bearer)]: with postponed annotations
    # FastAPI could not resolve a closure's local name from the annotation string.
    async def require_token(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if not token_list:
            return
        if creds is None or creds.scheme.lower() != "bearer":
            raise ApiError(401, "missing bearer token (Authorization: Bearer <token>)",
                           code="missing_api_key", headers={"WWW-Authenticate": "Bearer"})
        if not _token_ok(creds.credentials, token_list):
            raise ApiError(401, "invalid bearer token", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    # -- error handlers ---------------------------------------------------------------

    async def on_api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.message, code=exc.code, param=exc.param,
                              type_=exc.type, job_id=exc.job_id, headers=exc.headers)

    async def on_validation(_: Request, exc: Exception) -> Response:
        errors = exc.errors() if isinstance(exc, RequestValidationError | ValidationError) else []
        param, msg = _validation_error(errors)
        return error_response(422, msg, code="invalid_value", param=param)

    async def on_rejected(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, JobRejected)
        return error_response(422, exc.message, code="job_rejected", param=exc.field)

    async def on_no_route(_: Request, exc: Exception) -> Response:
        # The policy starts its messages with the field it refused ("tier: ...").
        head, sep, _ = str(exc).partition(":")
        param = head if sep and re.fullmatch(r"[\w.]+", head) else None
        return error_response(422, str(exc), code="no_route", param=param)

    async def on_timeout(_: Request, exc: Exception) -> Response:
        return error_response(504, str(exc), code="timeout")

    async def on_redis_down(_: Request, exc: Exception) -> Response:
        log.warning("api: redis unavailable: %s", exc)
        return error_response(503, "the fleet's Redis is unreachable; retry later",
                              code="redis_unavailable", headers={"Retry-After": "5"})

    async def on_config(_: Request, exc: Exception) -> Response:
        log.error("api: configuration error: %s", exc)
        return error_response(500, f"server configuration error: {exc}", code="config_error")

    async def on_http(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(
            exc.status_code)
        return error_response(exc.status_code, str(exc.detail), code=code,
                              headers=getattr(exc, "headers", None))

    async def on_crash(_: Request, exc: Exception) -> Response:
        log.exception("api: unexpected error", exc_info=exc)
        return error_response(500, "internal error", code="internal_error")

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(ValidationError, on_validation)
    app.add_exception_handler(JobRejected, on_rejected)
    app.add_exception_handler(NoRoute, on_no_route)
    app.add_exception_handler(ResultTimeout, on_timeout)
    app.add_exception_handler(redis.RedisError, on_redis_down)
    app.add_exception_handler(KombuOperationalError, on_redis_down)
    app.add_exception_handler(ConfigError, on_config)
    app.add_exception_handler(TierfleetError, on_config)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_crash)

    # Order: the outermost middleware is added last. Metrics see every answer, 413s included.
    app.add_middleware(BodyLimit, max_bytes=cfg.api.max_body_bytes)
    app.add_middleware(RequestMetrics, requests=requests_total, latency=request_seconds)

    auth = [Depends(require_token)]

    async def wait_final(job_id: str, seconds: float) -> Result | None:
        """The job's stored result once final, or the latest one when ``seconds`` run out."""
        deadline = time.monotonic() + seconds
        delay = 0.02
        while True:
            res = await run_in_threadpool(d.results.get, job_id)
            if res is None or res.status in FINAL:
                # No record at all: the id was never submitted (pending is stored before
                # the message is sent), so waiting would only delay the 404.
                return res
            left = deadline - time.monotonic()
            if left <= 0:
                return res
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 1.5, 0.25)

    # -- jobs ---------------------------------------------------------------------------

    @app.post("/v1/jobs", status_code=202, response_model=Handle, dependencies=auth,
              responses=_ERRORS, tags=["jobs"], summary="Submit a job")
    async def submit_job(job: Annotated[Job, Body(openapi_examples=JOB_EXAMPLES)]) -> Handle:
        return await run_in_threadpool(d.submit, job)

    @app.post("/v1/jobs/batch", status_code=202, response_model=list[Handle], dependencies=auth,
              responses=_ERRORS, tags=["jobs"],
              summary="Submit many jobs; a bad one rejects the batch before anything is enqueued")
    async def submit_batch(
        batch: Annotated[JobBatch, Body(openapi_examples={"two": {"value": {"jobs": [
            JOB_EXAMPLES["rules"]["value"], JOB_EXAMPLES["model"]["value"]]}}})],
    ) -> list[Handle]:
        if len(batch.jobs) > cfg.limits.max_batch:
            raise ApiError(422, f"{len(batch.jobs)} jobs, limit {cfg.limits.max_batch}",
                           code="job_rejected", param="jobs")
        try:
            return await run_in_threadpool(d.submit_many, batch.jobs)
        except JobRejected as exc:
            raise JobRejected(f"jobs{exc.field}" if exc.field.startswith("[") else exc.field,
                              exc.message) from None

    @app.get("/v1/jobs/{job_id}", response_model=Result, dependencies=auth,
             responses={**_ERRORS, 404: {"model": ErrorResponse, "description": "unknown job id"}},
             tags=["jobs"], summary="A job's result (pending until it is final)")
    async def get_job(
        job_id: Annotated[str, Path(min_length=1, max_length=128, pattern=JOB_ID_PATTERN)],
        wait: Annotated[float, Query(ge=0, description="seconds to wait for a final result "
                                     "(capped at api.wait_timeout_s)")] = 0.0,
    ) -> Result:
        res = await wait_final(job_id, min(wait, cfg.api.wait_timeout_s))
        if res is None:
            raise ApiError(404, f"no job with id {job_id!r}", code="job_not_found",
                           param="job_id")
        return res

    @app.get("/v1/status", dependencies=auth, responses=_ERRORS, tags=["fleet"],
             summary="Queues, workers, hosts and breakers, parked jobs, dead letters")
    async def status() -> dict[str, Any]:
        return await run_in_threadpool(d.status)

    # -- OpenAI-compatible ---------------------------------------------------------------

    @app.post(
        "/v1/chat/completions", response_model=ChatCompletion, dependencies=auth, tags=["openai"],
        summary="OpenAI-compatible chat completion routed through the fleet",
        responses={
            **_ERRORS,
            200: {"content": {"text/event-stream": {}},
                  "description": "chat.completion, or an event stream when stream=true"},
            404: {"model": ErrorResponse, "description": "unknown model or tier"},
            502: {"model": ErrorResponse, "description": "the job failed at its host"},
            504: {"model": ErrorResponse,
                  "description": "not finished in time; poll GET /v1/jobs/{error.job_id}"},
        },
    )
    async def chat_completions(
        body: Annotated[ChatCompletionRequest, Body(openapi_examples=CHAT_EXAMPLES)],
        x_tierfleet_privacy: Annotated[Privacy | None, Header()] = None,
        x_tierfleet_risk: Annotated[Risk | None, Header()] = None,
        x_tierfleet_workflow: Annotated[str | None, Header(max_length=128)] = None,
        x_tierfleet_kind: Annotated[Kind | None, Header()] = None,
        x_tierfleet_session: Annotated[str | None, Header(max_length=128)] = None,
        x_tierfleet_user_tier: Annotated[UserTier | None, Header()] = None,
        x_tierfleet_job_id: Annotated[str | None, Header(max_length=128)] = None,
    ) -> Response:
        headers = {
            "privacy": x_tierfleet_privacy, "risk": x_tierfleet_risk,
            "workflow": x_tierfleet_workflow, "kind": x_tierfleet_kind,
            "session": x_tierfleet_session, "user_tier": x_tierfleet_user_tier,
            "id": x_tierfleet_job_id,
        }
        job, wait_s = _chat_job(cfg, body, {k: (v.value if hasattr(v, "value") else v)
                                            for k, v in headers.items()})
        limit = min(wait_s or cfg.api.wait_timeout_s, cfg.api.wait_timeout_s)
        stored = await run_in_threadpool(d.results.get, job.id)
        if stored is None or stored.status not in FINAL:
            # A repeated request with the same job id gets the stored answer, not a second run.
            await run_in_threadpool(d.submit, job)
        res = await wait_final(job.id, limit)
        if res is None or res.status not in FINAL:
            raise ApiError(504, f"job {job.id} not finished after {limit:g}s; poll "
                           f"GET /v1/jobs/{job.id}", code="timeout", job_id=job.id,
                           headers={"x-tierfleet-job-id": job.id})
        extra = _result_headers(res)
        if res.status is Status.FAILED:
            raise ApiError(502, f"job {job.id} failed: {res.error or 'unknown error'}",
                           code="job_failed", job_id=job.id, headers=extra)
        if res.status is Status.DEAD:
            raise ApiError(503, f"job {job.id} was given up on: {res.error or 'no tier up'}",
                           code="job_dead", job_id=job.id, headers=extra)
        completion = _completion(res, body.model)
        if body.stream:
            include = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(iter(_sse(completion, include)),
                                     media_type="text/event-stream", headers=extra)
        return JSONResponse(completion.model_dump(mode="json"), headers=extra)

    # -- operations ----------------------------------------------------------------------

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics (text format)",
             response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def metrics() -> Response:
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", response_model=Health, tags=["operations"],
             responses={503: {"model": Health, "description": "Redis unreachable"}},
             summary="200 when the fleet's Redis answers")
    async def healthz() -> JSONResponse:
        try:
            ok = bool(await run_in_threadpool(d.r.ping))
        except redis.RedisError:
            ok = False
        health = Health(status="ok" if ok else "unavailable", redis=ok)
        return JSONResponse(health.model_dump(), status_code=200 if ok else 503)

    return app


def serve(config: FleetConfig | None = None, host: str = "127.0.0.1", port: int = 8000, *,
          insecure_no_auth: bool = False, log_level: str = "info") -> None:
    """Run the API under uvicorn (blocks). Refuses an open API on a non-loopback address."""
    import uvicorn

    cfg = config or get_config()
    tokens = load_tokens(cfg)
    if not tokens:
        if not is_loopback(host) and not insecure_no_auth:
            raise ConfigError(
                f"no API token configured (set {cfg.api.tokens_env}=token1,token2) and "
                f"{host} is not a loopback address: refusing to serve an open API. "
                "Pass --insecure-no-auth to do it anyway."
            )
        log.warning("api: no token configured (%s): anyone who can reach %s:%d may submit jobs",
                    cfg.api.tokens_env, host, port)
    app = create_app(cfg, tokens=tokens)
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False,
                proxy_headers=False)
