"""Error shapes and handlers: every answer that is not a success has OpenAI's shape.

``{"error": {"message", "type", "code", "param"}}``, with ``param`` naming the
offending field, so OpenAI SDKs raise their own typed errors and a caller of
``POST /v1/jobs`` learns which field to fix. Each error family of the package
has its own status (:func:`install_handlers`): the caller's input is 422, a
host that failed is 502, Redis or the fleet unable to take the job is 503, a
wait that ran out is 504; only a fault of the server itself (its config, a bug)
is 500. Client input never produces a 500.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from kombu.exceptions import OperationalError as KombuOperationalError
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..backends import BackendError
from ..errors import ConfigError, JobRejected, NoRoute, ResultTimeout, TierfleetError

__all__ = ["ERROR_RESPONSES", "ApiError", "ErrorBody", "ErrorResponse", "error_response",
           "install_handlers"]

log = logging.getLogger("tierfleet.api")

# Messages that start with the field they refuse ("tier: ..."), as the policy's and the
# job model's whole-object checks do.
_FIELD_HEAD = re.compile(r"[\w.]+")


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
    """An answer decided in the API itself (unknown job, bad token, ...), with its status."""

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


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "missing or wrong bearer token"},
    413: {"model": ErrorResponse, "description": "request body over api.max_body_bytes"},
    422: {"model": ErrorResponse, "description": "invalid input; error.param names the field"},
    503: {"model": ErrorResponse, "description": "Redis unreachable"},
}


def _field_of(message: str) -> str | None:
    head, sep, _ = message.partition(":")
    return head if sep and _FIELD_HEAD.fullmatch(head) else None


def _loc_param(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts)


def validation_error(errors: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """(param, message) of the first problem, the way the Python API names it."""
    if not errors:
        return "body", "invalid request"
    first = errors[0]
    param = _loc_param(first.get("loc", ()))
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if not param or param.isdigit():
        # A whole-object check (e.g. "prompt: a summary job needs ..."): it names its field.
        param = _field_of(msg) or param or "body"
    if first.get("type") == "json_invalid":
        param = "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return param, msg + more



def _status_of_no_route(exc: NoRoute) -> tuple[int, str | None]:
    """422 when the policy names the job field it refused (the caller can change it);
    503 when no field is to blame: the fleet cannot take the job now."""
    param = _field_of(str(exc))
    return (422, param) if param else (503, None)


def install_handlers(app: FastAPI) -> None:
    """One handler per error family, from the most specific to :class:`Exception`."""

    async def on_api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.message, code=exc.code, param=exc.param,
                              type_=exc.type, job_id=exc.job_id, headers=exc.headers)

    async def on_validation(_: Request, exc: Exception) -> Response:
        errors = exc.errors() if isinstance(exc, RequestValidationError | ValidationError) else []
        param, msg = validation_error(errors)
        return error_response(422, msg, code="invalid_value", param=param)

    async def on_rejected(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, JobRejected)
        return error_response(422, exc.message, code="job_rejected", param=exc.field)

    async def on_no_route(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, NoRoute)
        status, param = _status_of_no_route(exc)
        return error_response(status, str(exc), code="no_route", param=param)

    async def on_timeout(_: Request, exc: Exception) -> Response:
        return error_response(504, str(exc), code="timeout")

    async def on_backend(_: Request, exc: Exception) -> Response:
        # A host's answer, already stripped of keys by the backend clients.
        return error_response(502, str(exc), code="upstream_error")

    async def on_redis_down(_: Request, exc: Exception) -> Response:
        log.warning("api: redis unavailable: %s", exc)
        return error_response(503, "the fleet's Redis is unreachable; retry later",
                              code="redis_unavailable", headers={"Retry-After": "5"})

    async def on_config(_: Request, exc: Exception) -> Response:
        log.error("api: configuration error: %s", exc)
        return error_response(500, f"server configuration error: {exc}", code="config_error")

    async def on_tierfleet(_: Request, exc: Exception) -> Response:
        # An error of the package no family above claims: the server's fault, said plainly.
        log.error("api: %s: %s", type(exc).__name__, exc)
        return error_response(500, str(exc), code="internal_error")

    async def on_too_deep(_: Request, exc: Exception) -> Response:
        # json.loads and pydantic recurse; a body nested thousands deep is the caller's input.
        return error_response(422, "input nested too deep", code="invalid_value", param="body")

    async def on_http(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400:
            # FastAPI's answer when the JSON parser itself gives up (a body nested
            # thousands deep): the caller's input, so 422 like any other bad body.
            return error_response(422, "request body is not JSON the API can read (not UTF-8, "
                                  "or nested too deep)", code="invalid_value", param="body")
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
    app.add_exception_handler(BackendError, on_backend)
    app.add_exception_handler(redis.RedisError, on_redis_down)
    app.add_exception_handler(KombuOperationalError, on_redis_down)
    app.add_exception_handler(ConfigError, on_config)
    app.add_exception_handler(TierfleetError, on_tierfleet)
    app.add_exception_handler(RecursionError, on_too_deep)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_crash)
