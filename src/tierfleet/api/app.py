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
  (a named producer's lists hold only its own jobs)
- ``POST /v1/chat/completions`` OpenAI-compatible; waits for the answer (below)
- ``GET  /v1/models``          ``auto``, the models and ``tier:NAME``, with privacy and capabilities
- ``GET  /v1/models/{id}``     one of them (the SDK's ``models.retrieve``); 404 for an unknown id
- ``GET  /metrics``            Prometheus text format: this API process's requests only (the
  fleet-wide series come from ``tierfleet metrics``, their one exporter)
- ``GET  /healthz``            200 when Redis answers, else 503
- ``GET  /openapi.json``     the schema (no ``/docs`` page: it would load Swagger from a CDN)

This module builds the app and holds the job, status and operations routes; the chat
endpoint is in :mod:`.openai`, error shapes in :mod:`.errors`, tokens in :mod:`.auth`.

Errors always have OpenAI's shape ``{"error": {"message", "type", "code",
"param"}}``; ``param`` names the offending field. 401 bad or missing token,
404 unknown job/model/path, 413 body over ``api.max_body_bytes``, 422 invalid
input (``param`` is the field; also a job no tier may take because of one of
its fields, and input nested too deep), 502 the job or a host failed, 503 Redis
unreachable, no tier able to take the job, or the job given up on, 504 not
finished in time, 500 only for the server's own faults (its config). Client
input never produces a 500.

Auth. Producer tokens come from the environment variable named by
``api.tokens_env`` (comma separated ``name:token`` entries, several per producer so
tokens can be rotated; a bare token is the producer ``default``) and are compared
with :func:`hmac.compare_digest`. A producer sees only its own jobs (:mod:`.tenants`):
another producer's job id reads as unknown. With no token configured the API is open, and
:func:`serve` refuses to listen on anything but loopback unless
``insecure_no_auth`` (``tierfleet api --insecure-no-auth``) says so on purpose.
``/metrics``, ``/healthz`` and the schema stay open for scrapers and probes:
they carry counts, names and states, never prompts or keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import redis
from fastapi import Body, Depends, FastAPI, Path, Query
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from prometheus_client.registry import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..config import FleetConfig, get_config
from ..dispatch import Dispatcher, Handle
from ..errors import ConfigError, JobRejected
from ..jobs import TERMINAL, Job, Result
from ..rules._common import MAX_JSON_DEPTH, json_depth_over
from .auth import is_loopback, load_tokens, token_check
from .errors import ERROR_RESPONSES, ApiError, ErrorResponse, install_handlers
from .feedback import add_feedback_route
from .middleware import BodyLimit, RequestMetrics
from .models import add_models_route
from .openai import JOB_ID_PATTERN, add_chat_route
from .tenants import DEFAULT, Owners

__all__ = ["create_app", "serve"]

log = logging.getLogger("tierfleet.api")

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


class JobBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobs: list[Job] = Field(min_length=1)


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    redis: bool


def _check_depth(job: Job, field: str = "input") -> None:
    """Refuse an ``input`` nested too deep before anything serialises it.

    The dispatcher measures a job by dumping it, and pydantic gives up on deep values
    with a bare ValueError: checked here, the caller gets a 422 naming the field.
    """
    if job.input is not None and json_depth_over(job.input, MAX_JSON_DEPTH + 2):
        raise JobRejected(field, f"nested deeper than {MAX_JSON_DEPTH} levels")


def create_app(config: FleetConfig | None = None, dispatcher: Dispatcher | None = None, *,
               tokens: Sequence[str] | None = None) -> FastAPI:
    """The API for one fleet. ``tokens`` overrides the ones read from the environment."""
    cfg = config or (dispatcher.config if dispatcher is not None else get_config())
    d = dispatcher or Dispatcher(cfg)
    token_list = [t for t in (load_tokens(cfg) if tokens is None else tokens) if t]

    app = FastAPI(
        title="tierfleet",
        version="1",
        summary="Send every AI job to the cheapest place that can do it well.",
        description=(__doc__ or "").split("\n\n", 1)[0],
        responses={},
        # FastAPI's /docs and /redoc load their scripts from a CDN: blank without internet,
        # and a page that fetches third-party code. The schema itself is served offline.
        docs_url=None,
        redoc_url=None,
    )
    app.state.config = cfg
    app.state.dispatcher = d
    app.state.auth_enabled = bool(token_list)

    # Only this process's request metrics: the fleet-wide series have one exporter,
    # ``tierfleet metrics``, so scraping both never counts a job twice.
    registry = CollectorRegistry(auto_describe=False)
    requests_total = Counter("tierfleet_api_requests", "HTTP requests served by this API process",
                             ["method", "route", "status"], registry=registry)
    request_seconds = Histogram("tierfleet_api_request_seconds",
                                "Time this API process took per request", ["route"],
                                registry=registry)
    app.state.registry = registry

    install_handlers(app)

    # Order: the outermost middleware is added last. Metrics see every answer, 413s included.
    app.add_middleware(BodyLimit, max_bytes=cfg.api.max_body_bytes)
    app.add_middleware(RequestMetrics, requests=requests_total, latency=request_seconds)

    require = token_check(token_list)
    auth = [Depends(require)]
    owners = Owners(d.r, cfg)

    async def claimed(producer: str, jobs: Sequence[Job], field: str) -> None:
        """Claim every job's id for ``producer`` before admitting any (see ``tenants``)."""
        await run_in_threadpool(owners.claim_all, producer, [j.id for j in jobs], field)

    async def wait_final(job_id: str, seconds: float) -> Result | None:
        """The job's stored result once final, or the latest one when ``seconds`` run out."""
        deadline = time.monotonic() + seconds
        delay = 0.02
        while True:
            res = await run_in_threadpool(d.results.get, job_id)
            if res is None or res.status in TERMINAL:
                # No record at all: the id was never submitted (pending is stored before
                # the message is sent), so waiting would only delay the 404.
                return res
            left = deadline - time.monotonic()
            if left <= 0:
                return res
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 1.5, 0.25)


    @app.post("/v1/jobs", status_code=202, response_model=Handle, dependencies=auth,
              responses=ERROR_RESPONSES, tags=["jobs"], summary="Submit a job")
    async def submit_job(job: Annotated[Job, Body(openapi_examples=JOB_EXAMPLES)],
                         producer: str = Depends(require)) -> Handle:
        _check_depth(job)
        await claimed(producer, [job], "id")
        return await run_in_threadpool(d.submit, job)

    @app.post("/v1/jobs/batch", status_code=202, response_model=list[Handle], dependencies=auth,
              responses=ERROR_RESPONSES, tags=["jobs"],
              summary="Submit many jobs; a bad one rejects the batch before anything is enqueued")
    async def submit_batch(
        batch: Annotated[JobBatch, Body(openapi_examples={"two": {"value": {"jobs": [
            JOB_EXAMPLES["rules"]["value"], JOB_EXAMPLES["model"]["value"]]}}})],
        producer: str = Depends(require),
    ) -> list[Handle]:
        if len(batch.jobs) > cfg.limits.max_batch:
            raise ApiError(422, f"{len(batch.jobs)} jobs, limit {cfg.limits.max_batch}",
                           code="job_rejected", param="jobs")
        for i, job in enumerate(batch.jobs):
            _check_depth(job, f"jobs[{i}].input")
        await claimed(producer, batch.jobs, "jobs[{i}].id")
        try:
            return await run_in_threadpool(d.submit_many, batch.jobs)
        except JobRejected as exc:
            raise JobRejected(f"jobs{exc.field}" if exc.field.startswith("[") else exc.field,
                              exc.message) from None

    @app.get("/v1/jobs/{job_id}", response_model=Result, dependencies=auth,
             responses={**ERROR_RESPONSES, 404: {"model": ErrorResponse, "description": "unknown job id"}},
             tags=["jobs"], summary="A job's result (pending until it is final)")
    async def get_job(
        job_id: Annotated[str, Path(min_length=1, max_length=128, pattern=JOB_ID_PATTERN)],
        # Finite: "inf" would hold the request to the cap, which is no number a caller means.
        wait: Annotated[float, Query(ge=0, allow_inf_nan=False,
                                     description="seconds to wait for a final result "
                                     "(capped at api.wait_timeout_s)")] = 0.0,
        producer: str = Depends(require),
    ) -> Result:
        # Another producer's job reads exactly as an unknown one: nothing says it exists.
        mine = await run_in_threadpool(owners.owns, producer, job_id)
        res = await wait_final(job_id, min(wait, cfg.api.wait_timeout_s)) if mine else None
        if res is None:
            raise ApiError(404, f"no job with id {job_id!r}", code="job_not_found",
                           param="job_id")
        return res

    @app.get("/v1/status", responses=ERROR_RESPONSES, tags=["fleet"],
             summary="Queues, workers, hosts and breakers, parked jobs, dead letters")
    async def status(producer: str = Depends(require)) -> dict[str, Any]:
        st = await run_in_threadpool(d.status)
        if producer != DEFAULT:
            # The fleet's counts, and of its parked and dead jobs only the caller's own:
            # the lists name jobs, and another producer's are not this caller's to see.
            for name in ("parked", "dead_letters"):
                entries = st.get(name) or []
                mine = await run_in_threadpool(owners.mine, producer,
                                               [str(e.get("id")) for e in entries])
                st[name] = [e for e, ok in zip(entries, mine, strict=True) if ok]
        return st

    add_chat_route(app, cfg, d, auth=require, owners=owners, wait_final=wait_final)
    add_models_route(app, cfg, auth=auth)
    add_feedback_route(app, d, cfg, require, owners)


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

    # HEAD too, as load balancers and uptime probes often ask (the server sends no body);
    # left out of the schema, where it would be a second operation of the same route.
    app.head("/healthz", include_in_schema=False)(healthz)
    app.head("/metrics", include_in_schema=False)(metrics)

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
