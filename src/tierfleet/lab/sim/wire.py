"""What every simulated wire protocol shares: the HTTP exchange, model facts, errors.

The protocol modules (:mod:`.ollama`, :mod:`.openai`, :mod:`.runpod`) are route
functions over an :class:`Exchange`: read the body, spend the simulated latency
holding one of the host's parallel slots, send JSON with the simulated header.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Protocol

from ...backends import SIMULATED_HEADER
from .answers import Answer, compose

if TYPE_CHECKING:
    from .server import SimHost

__all__ = ["GENERATION_ROUTES", "MAX_BODY_BYTES", "Abort", "Exchange", "HttpError", "ModelInfo",
           "Route", "now_iso", "ollama_name"]

MAX_BODY_BYTES = 20_000_000  # Runpod's /runsync limit; larger bodies get 413
GENERATION_ROUTES = frozenset({"chat", "openai_chat", "run", "runsync"})


@dataclass(frozen=True)
class ModelInfo:
    """A model a simulated host serves: its name, window and whether it sees images."""

    name: str
    context_window: int = 8192
    vision: bool = False


def ollama_name(name: str) -> str:
    """Ollama's spelling of a model name: an untagged name means ``:latest``."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class HttpError(Exception):
    """Answer ``{"error": message}`` with this status (the protocols' plain error shape)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Abort(Exception):
    """Close the connection without answering (hang released, host went down)."""


class Listener(ThreadingHTTPServer):
    """One listening socket of a host; ``gone`` is set when the host goes down."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    sim: SimHost
    gone: Any


class Exchange(BaseHTTPRequestHandler):
    """One request to a simulated host, with the plumbing every protocol uses."""

    server: Listener
    protocol_version = "HTTP/1.0"  # one request per connection: "down" really drops everyone
    server_version = "tierfleet-sim"

    @property
    def host(self) -> SimHost:
        return self.server.sim

    def log_message(self, format: str, *args: Any) -> None:
        return

    def send(
        self,
        status: int,
        payload: Any,
        *,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        if isinstance(payload, bytes):
            data = payload
        elif isinstance(payload, str):
            data = payload.encode()
        else:
            data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header(SIMULATED_HEADER, "1")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def raw(self) -> bytes:
        # Read the whole body before any answer: closing with unread bytes makes the kernel
        # send a reset, and the client would see "connection reset" instead of our 401.
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise HttpError(413, "request body too large")
        return self.rfile.read(length) if length else b""

    @staticmethod
    def parse(raw: bytes) -> Any:
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"invalid JSON: {exc}") from None

    def sleep(self, seconds: float) -> None:
        if seconds > 0 and self.server.gone.wait(seconds):
            raise Abort

    def answer(
        self,
        model: ModelInfo,
        messages: list[dict[str, Any]],
        *,
        json_output: bool,
        max_tokens: int | None,
        route: str,
        schema: dict[str, Any] | None = None,
        tools: list[Any] | None = None,
        stream: bool = False,
    ) -> Answer:
        """Compose the answer and spend its latency, holding one of the host's parallel slots."""
        host = self.host
        answer = compose(
            model.name,
            messages,
            json_output=json_output,
            max_tokens=max_tokens,
            vision=model.vision,
            scale=host.scale,
            schema=schema,
            tools=tools,
        )
        if host.take("refusal", route) is not None:
            text = f"[simulated {model.name}] I'm sorry, but I can't help with that."
            answer = dataclasses.replace(answer, text=text, finish_reason="stop",
                                         tokens_out=max(1, len(text) // 4))
        slow = host.take("slow", route)
        extra = slow.seconds if slow is not None else 0.0
        while not host._slots.acquire(timeout=0.05):
            if self.server.gone.is_set():
                raise Abort
        # A stream spends the time to its first token here and the rest between tokens.
        ahead = answer.per_token_s * answer.tokens_out if stream else 0.0
        try:
            self.sleep(max(0.0, answer.latency_s - ahead) + extra)
        finally:
            host._slots.release()
        return answer

    def stream_start(self, content_type: str) -> None:
        """Headers of a streamed answer: no length, the body ends when the connection does."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header(SIMULATED_HEADER, "1")
        self.end_headers()
        self.close_connection = True

    def stream_write(self, data: str, pause_s: float = 0.0) -> None:
        """One piece of a stream, sent now; ``pause_s`` first (the model's time per token)."""
        self.sleep(pause_s)
        self.wfile.write(data.encode())
        self.wfile.flush()



class Route(Protocol):
    """A protocol's answer to one route: the parsed body, the Runpod job id, the query."""

    def __call__(self, ex: Exchange, body: Any, job_id: str | None,
                 query: dict[str, list[str]]) -> None: ...
