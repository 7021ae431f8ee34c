"""The HTTP API wing: FastAPI on uvicorn, installed with ``pip install 'tierfleet[api]'``.

One module per concern: :mod:`.app` (create_app, the job routes, status, metrics,
health, serve), :mod:`.openai` (the OpenAI-compatible chat endpoint),
:mod:`.errors` (OpenAI's error shape and one status per error family),
:mod:`.middleware` (body limit, request metrics) and :mod:`.auth` (tokens, loopback).
The core never imports this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .auth import is_loopback, load_tokens

if TYPE_CHECKING:
    from .app import create_app, serve

__all__ = ["create_app", "is_loopback", "load_tokens", "serve"]


def __getattr__(name: str) -> Any:
    # The app needs FastAPI (the ``api`` extra); auth does not, so Flower can share
    # is_loopback without it. Loaded on first use, with one line naming the extra.
    if name in ("create_app", "serve"):
        from ..extras import require

        require("api")
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
