"""ASGI middleware of the API: a body-size limit and per-route request metrics.

Plain ASGI rather than Starlette's ``BaseHTTPMiddleware``: the limit must see a
streamed body chunk by chunk (a missing or lying Content-Length must not let a
huge body through), and the metrics must see the status of every answer,
413s included.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import error_response

__all__ = ["BodyLimit", "RequestMetrics"]

Scope = MutableMapping[str, Any]
AsgiMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[AsgiMessage]]
Send = Callable[[AsgiMessage], Awaitable[None]]
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

        async def limited() -> AsgiMessage:
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

        async def watch(msg: AsgiMessage) -> None:
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

