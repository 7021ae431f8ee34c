"""What every HTTP client here shares: secrets, timeouts and the error taxonomy.

Each host kind words its errors differently (Ollama ``{"error": "..."}``, OpenAI
``{"error": {"message", "type", "code"}}``, llama.cpp adds its own ``type``s,
Runpod plain text). :func:`error_from_response` turns any of them into one of the
classes in :mod:`tierfleet.backends.base`, so the worker acts on the class alone.
"""

from __future__ import annotations

import email.utils
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from ..config import HostConfig
from .base import (
    AuthError,
    BackendError,
    BadRequest,
    ContextTooLong,
    HostDown,
    HostHealth,
    ModelNotFound,
    QuotaExhausted,
    RateLimited,
)

SIMULATED_HEADER = "x-tierfleet-simulated"
SECRETS_DIR_ENV = "TIERFLEET_SECRETS_DIR"
DEFAULT_HEALTH_TIMEOUT_S = 2.0
# Host messages end up in results and logs: keep them readable and bounded.
_MAX_MESSAGE = 500

_QUOTA_CODES = (
    "insufficient_quota",
    "credit_balance_exhausted",
    "organization_spend_limit_exceeded",
    "project_spend_limit_exceeded",
    "organization_usage_limit_exceeded",
    "spend_limit",
    "billing_hard_limit",
)
_QUOTA_WORDS = re.compile(
    r"insufficient[_ ]quota|exceeded your current quota|credit|spend[_ ]limit|billing", re.I
)
_CONTEXT = re.compile(
    r"context_length_exceeded|exceed_context_size|maximum context length|exceeds the context"
    r"|exceeds the available context|context length exceeded|context window|too many tokens",
    re.I,
)
_MODEL_MISSING = re.compile(r"model.{0,200}(not found|does not exist)|model_not_found", re.I | re.S)


class Secret:
    """An API key that never shows itself in a repr, a log line or a traceback's locals."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def load_api_key(env_name: str | None) -> Secret | None:
    """The key named by ``api_key_env``: the environment, else ``$TIERFLEET_SECRETS_DIR/<NAME>``.

    A secrets file suits Docker/Kubernetes secrets mounted as files.
    """
    if not env_name:
        return None
    value = os.environ.get(env_name)
    if not value:
        folder = os.environ.get(SECRETS_DIR_ENV)
        if folder:
            path = Path(folder) / env_name
            if path.is_file():
                value = path.read_text(encoding="utf-8").strip()
    return Secret(value) if value else None


def timeouts(host: HostConfig) -> httpx.Timeout:
    return httpx.Timeout(
        connect=host.connect_timeout_s,
        read=host.timeout_s,
        write=host.timeout_s,
        pool=host.connect_timeout_s,
    )


def health_timeouts(host: HostConfig, seconds: float) -> httpx.Timeout:
    # A health check must be quick whatever the generation timeout is.
    return httpx.Timeout(seconds, connect=min(host.connect_timeout_s, seconds))


def scrub(text: str, secret: Secret | None) -> str:
    """Hosts sometimes echo the key they refused; never let it into our messages."""
    if secret is not None and secret.reveal() and secret.reveal() in text:
        text = text.replace(secret.reveal(), "***")
    text = re.sub(r"(Bearer\s+)[^\s\"']+", r"\1***", text)
    return text[:_MAX_MESSAGE]


def is_simulated(response: httpx.Response) -> bool:
    return response.headers.get(SIMULATED_HEADER, "") == "1"


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait: ``retry-after-ms``, then ``Retry-After`` in seconds or as an HTTP date."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(float(ms) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _error_fields(response: httpx.Response) -> tuple[str, str, str]:
    """(message, type, code) from any of the error shapes the hosts use."""
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return response.text.strip() or response.reason_phrase, "", ""
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, str):
            return err, "", ""
        if isinstance(err, dict):
            message = str(err.get("message") or err.get("detail") or json.dumps(err)[:_MAX_MESSAGE])
            return message, str(err.get("type") or ""), str(err.get("code") or "")
        if "detail" in body:
            return str(body["detail"]), "", ""
    return json.dumps(body)[:_MAX_MESSAGE], "", ""


def error_from_response(host: str, response: httpx.Response, secret: Secret | None = None) -> BackendError:
    """One class of :mod:`base` for a non-2xx answer, carrying the host's own message."""
    status = response.status_code
    message, etype, code = _error_fields(response)
    message = scrub(message, secret)
    tags = f"{etype} {code}".lower()
    if status == 429:
        if any(c in tags for c in _QUOTA_CODES):
            return QuotaExhausted(host, message, status=status)
        # The code beats the wording: a rate-limit message may mention billing pages.
        if "rate_limit" not in tags and _QUOTA_WORDS.search(message):
            return QuotaExhausted(host, message, status=status)
        return RateLimited(host, message, retry_after=parse_retry_after(response.headers))
    if status in (401, 403):
        return AuthError(host, message, status=status)
    if status == 402:  # payment required: some gateways' way of saying the credit is gone
        return QuotaExhausted(host, message, status=status)
    if status == 408 or status >= 500:
        return HostDown(host, message, status=status)
    if _CONTEXT.search(tags) or _CONTEXT.search(message):
        return ContextTooLong(host, message, status=status)
    if status == 404 or _MODEL_MISSING.search(f"{code} {message}"):
        return ModelNotFound(host, message, status=status)
    return BadRequest(host, message, status=status)


def error_from_message(host: str, message: str, secret: Secret | None = None) -> BackendError:
    """For failures reported inside a 200 answer (a FAILED Runpod job, an Ollama stream error)."""
    message = scrub(message, secret)
    if _CONTEXT.search(message):
        return ContextTooLong(host, message)
    if _MODEL_MISSING.search(message):
        return ModelNotFound(host, message)
    return HostDown(host, message)


def transport_error(host: str, exc: httpx.HTTPError) -> HostDown:
    """Connection refused, timeouts, resets: the host is not answering."""
    if isinstance(exc, httpx.TimeoutException):
        what = {
            httpx.ConnectTimeout: "connect timeout",
            httpx.ReadTimeout: "read timeout",
            httpx.WriteTimeout: "write timeout",
            httpx.PoolTimeout: "pool timeout",
        }.get(type(exc), "timeout")
        err = HostDown(host, what)
        # Never connected: no request reached the host, so nothing it could bill.
        err.reached = not isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout)
        return err
    if isinstance(exc, httpx.ConnectError):
        err = HostDown(host, f"connection failed: {exc}"[:_MAX_MESSAGE])
        err.reached = False
        return err
    return HostDown(host, f"{type(exc).__name__}: {exc}"[:_MAX_MESSAGE])


def json_body(host: str, response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        # A proxy's HTML error page or a half-written answer: this host is not serving us.
        raise HostDown(host, f"answer is not JSON (HTTP {response.status_code})") from exc
    if not isinstance(body, dict):
        raise HostDown(host, f"answer is not a JSON object (HTTP {response.status_code})")
    return body


class HttpBackend:
    """Shared plumbing: one httpx client per backend, explicit timeouts, a Bearer key if any."""

    kind: str = "http"

    def __init__(
        self,
        name: str,
        host: HostConfig,
        *,
        health_timeout_s: float = DEFAULT_HEALTH_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.base_url = host.url.rstrip("/")
        self.health_timeout_s = health_timeout_s
        self._key = load_api_key(host.api_key_env)
        self._client = httpx.Client(timeout=timeouts(host), transport=transport)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, url={self.base_url!r})"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.host.api_key_env:
            if self._key is None:
                # Read again: a key added after start-up (secret rotated in) should work.
                self._key = load_api_key(self.host.api_key_env)
            if self._key is None:
                raise AuthError(
                    self.name,
                    f"no API key: set the environment variable {self.host.api_key_env} "
                    f"(or the file ${SECRETS_DIR_ENV}/{self.host.api_key_env})",
                )
            headers["Authorization"] = f"Bearer {self._key.reveal()}"
        return headers

    def _request(
        self,
        method: str,
        url: str,
        *,
        json_data: dict[str, Any] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        """Send, turning transport failures and non-2xx answers into the taxonomy."""
        headers = self._headers()
        try:
            if timeout is None:
                response = self._client.request(method, url, json=json_data, headers=headers)
            else:
                response = self._client.request(method, url, json=json_data, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            raise transport_error(self.name, exc) from None
        if response.status_code >= 400:
            raise error_from_response(self.name, response, self._key)
        return response

    def _stream_lines(self, url: str, json_data: dict[str, Any]) -> Iterator[tuple[httpx.Response, str]]:
        """POST and yield the answer's lines as they arrive (NDJSON, SSE), with the same
        error taxonomy as :meth:`_request`; a connection dropped mid-answer is HostDown."""
        headers = {**self._headers(), "Accept": "application/x-ndjson, text/event-stream"}
        try:
            with self._client.stream("POST", url, json=json_data, headers=headers) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_from_response(self.name, response, self._key)
                for line in response.iter_lines():
                    if line.strip():
                        yield response, line
        except httpx.HTTPError as exc:
            raise transport_error(self.name, exc) from None

    def _probe(self, url: str) -> tuple[httpx.Response, dict[str, Any]] | HostHealth:
        """GET a health path with the short health timeout: the answer, or a HostHealth saying down."""
        started = time.monotonic()
        try:
            response = self._request("GET", url, timeout=health_timeouts(self.host, self.health_timeout_s))
            return response, json_body(self.name, response)
        except BackendError as exc:
            return HostHealth(host=self.name, ok=False, latency_s=time.monotonic() - started,
                              detail=exc.message, local_fault=isinstance(exc, AuthError))


def reported_count(value: Any) -> int | None:
    """A token count as the host reported it; absent or garbled stays None (the caller estimates)."""
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
