"""The one protocol every model host speaks, and the errors a worker acts on.

Error classes map to what the worker does next. A host failure moves the job
on (another host of the tier, then the next tier its privacy allows); a request
the host rejects fails the job, since any other host would reject it too. The
whole error tree is drawn in :mod:`tierfleet.errors`.

================  ==================================================
HostDown          mark the breaker, fall back to the next tier
RateLimited       wait ``retry_after`` if within budget, else fall back
QuotaExhausted    open the breaker hard (no retry), fall back
ContextTooLong    fall back to a host with a larger window
BadRequest        fail the job with the host's message (no fallback)
AuthError         configuration error: fail, alert
ModelNotFound     configuration error: fail, alert
================  ==================================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from ..errors import TierfleetError


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    images: list[str] = Field(default_factory=list)  # base64, no data: prefix
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI's shape, on assistant turns
    tool_call_id: str | None = None  # on tool turns


class CompletionRequest(BaseModel):
    model: str
    messages: list[ChatMessage]
    max_tokens: int | None = None
    temperature: float | None = 0.0
    json_output: bool = False
    json_schema: dict[str, Any] | None = None  # constrain the answer to this schema
    tools: list[dict[str, Any]] | None = None  # OpenAI's tools shape
    tool_choice: str | dict[str, Any] | None = None
    # Used by hosts whose jobs outlive a request (Runpod) to resume instead of paying twice.
    job_id: str | None = None
    # Called with each piece of text as the host streams it: set, the backend asks its host
    # to stream (Ollama NDJSON, OpenAI SSE); unset, it asks for one answer. Not sent.
    on_token: Callable[[str], None] | None = Field(default=None, exclude=True, repr=False)
    options: dict[str, Any] = Field(default_factory=dict)


class Completion(BaseModel):
    text: str
    model: str
    host: str
    tokens_in: int | None = None  # as reported by the host; None when it reports none
    tokens_out: int | None = None
    latency_s: float = 0.0
    finish_reason: str | None = None  # "stop", "length", ...
    simulated: bool = False
    external_id: str | None = None  # e.g. the Runpod job id
    billed_seconds: float | None = None  # Runpod executionTime, for per-second billing
    # Function calls in OpenAI's shape: [{"id", "type": "function", "function": {"name",
    # "arguments": "<JSON string>"}}]; None when the model answered in text.
    tool_calls: list[dict[str, Any]] | None = None


class HostHealth(BaseModel):
    host: str
    ok: bool
    latency_s: float = 0.0
    detail: str = ""
    models: list[str] = Field(default_factory=list)
    model_present: bool | None = None
    load: dict[str, Any] = Field(default_factory=dict)  # Runpod: workers and jobs in queue
    simulated: bool = False
    # The probe failed for this process's own reason (its key missing or refused, 401/403):
    # the host may be fine for every other worker, so no shared breaker may hear of it.
    local_fault: bool = False


class BackendError(TierfleetError):
    """A host failed a request. ``host`` names it; the message is the host's own.

    ``fallback`` says whether trying another place may help; the runner reads it.
    An error of no known family fails the job, as a request error does.
    """

    fallback: bool = False
    # Whether the request reached the host (False: connection refused or never opened),
    # i.e. whether the host could bill it; the ledger records only calls that reached it.
    reached: bool = True

    def __init__(self, host: str, message: str, *, status: int | None = None) -> None:
        super().__init__(f"{host}: {message}")
        self.host = host
        self.message = message
        self.status = status


class HostDown(BackendError):
    """Connection refused, timeout, 5xx, 503 busy."""

    fallback = True


class RateLimited(BackendError):
    """429: wait ``retry_after`` if it fits the budget, else try elsewhere."""

    fallback = True

    def __init__(
        self, host: str, message: str, *, retry_after: float | None = None, status: int = 429
    ) -> None:
        super().__init__(host, message, status=status)
        self.retry_after = retry_after


class QuotaExhausted(BackendError):
    """Billing quota gone: retrying here is pointless until someone pays."""

    fallback = True


class ContextTooLong(BackendError):
    """The prompt does not fit this host's window: only a larger window helps."""

    fallback = True


class BadRequest(BackendError):
    """The host rejected the request itself: fail the job with the host's message."""


class AuthError(BackendError):
    """Missing or wrong API key: a configuration error; fail and alert."""


class ModelNotFound(BackendError):
    """The host does not serve the model the config says it does: fail and alert."""


@runtime_checkable
class Backend(Protocol):
    """A client for one model host, as the runner sees it (``backends/*.py``, ``stub.py``).

    Owns nothing in Redis (a Runpod client keeps remote job ids in an
    :class:`ExternalIdStore` it is handed). The runner calls :meth:`complete` for
    each attempt and the health checker calls :meth:`health`; ``complete`` raises
    only :class:`BackendError` families, so the runner can act on the family.
    """

    name: str

    def complete(self, request: CompletionRequest) -> Completion: ...

    def health(self) -> HostHealth: ...


class ExternalIdStore(Protocol):
    """Where a backend keeps the id of a remote job, so a redelivery resumes it."""

    def get(self, job_id: str) -> str | None: ...

    def set(self, job_id: str, external_id: str) -> None: ...

    def clear(self, job_id: str) -> None: ...


class MemoryExternalIds:
    """In-process store; the worker uses a Redis-backed one."""

    def __init__(self) -> None:
        self._d: dict[str, str] = {}

    def get(self, job_id: str) -> str | None:
        return self._d.get(job_id)

    def set(self, job_id: str, external_id: str) -> None:
        self._d[job_id] = external_id

    def clear(self, job_id: str) -> None:
        self._d.pop(job_id, None)
