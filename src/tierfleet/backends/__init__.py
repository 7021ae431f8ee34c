"""Model host clients: one per host kind, one protocol (see :mod:`.base`).

``make_backend(name, host)`` picks the client from ``host.kind``. API keys come
from the environment variable named by ``host.api_key_env`` (or the file
``$TIERFLEET_SECRETS_DIR/<NAME>``); they never appear in a repr, a log line or
an exception message.
"""

from __future__ import annotations

import httpx

from ..config import HostConfig
from ._http import DEFAULT_HEALTH_TIMEOUT_S, SIMULATED_HEADER, load_api_key
from .base import (
    AuthError,
    Backend,
    BackendError,
    BadRequest,
    ChatMessage,
    Completion,
    CompletionRequest,
    ContextTooLong,
    ExternalIdStore,
    HostDown,
    HostHealth,
    MemoryExternalIds,
    ModelNotFound,
    QuotaExhausted,
    RateLimited,
)
from .ollama import OllamaBackend
from .openai_compat import OpenAICompatBackend
from .runpod import RunpodBackend
from .stub import StubBackend


def make_backend(
    name: str,
    host: HostConfig,
    *,
    external_ids: ExternalIdStore | None = None,
    health_timeout_s: float = DEFAULT_HEALTH_TIMEOUT_S,
    transport: httpx.BaseTransport | None = None,
) -> OllamaBackend | OpenAICompatBackend | RunpodBackend:
    """The client for one configured host. ``external_ids`` matters to Runpod only;
    ``transport`` (an ``httpx.MockTransport`` in tests) replaces the network."""
    if host.kind == "ollama":
        return OllamaBackend(name, host, health_timeout_s=health_timeout_s, transport=transport)
    if host.kind == "openai":
        return OpenAICompatBackend(name, host, health_timeout_s=health_timeout_s, transport=transport)
    if host.kind == "runpod":
        return RunpodBackend(name, host, external_ids=external_ids, health_timeout_s=health_timeout_s,
                             transport=transport)
    raise ValueError(f"hosts.{name}.kind: unknown host kind {host.kind!r}")


__all__ = [
    "SIMULATED_HEADER",
    "AuthError",
    "Backend",
    "BackendError",
    "BadRequest",
    "ChatMessage",
    "Completion",
    "CompletionRequest",
    "ContextTooLong",
    "ExternalIdStore",
    "HostDown",
    "HostHealth",
    "MemoryExternalIds",
    "ModelNotFound",
    "OllamaBackend",
    "OpenAICompatBackend",
    "QuotaExhausted",
    "RateLimited",
    "RunpodBackend",
    "StubBackend",
    "load_api_key",
    "make_backend",
]
