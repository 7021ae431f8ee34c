"""One simulated model host on its own loopback port.

It speaks three wire formats, chosen by path, with the shapes of the documented
examples (notes, part 2): Ollama (``/``, ``/api/version``, ``/api/tags``,
``/api/ps``, ``/api/chat``), OpenAI-compatible (any ``.../chat/completions`` and
``.../models``, so ``/v1`` and Ollama's ``/v1`` both work) and Runpod Serverless
(``/v2/{endpoint}/run|runsync|status/{id}|cancel/{id}|health``). Every answer
carries ``x-tierfleet-simulated: 1``; texts say ``[simulated <model>]``.

Built on the standard library's ThreadingHTTPServer rather than uvicorn: it
starts in milliseconds, needs no event loop, and one port can really stop
listening ("down" gives connection refused) and listen again ("up").
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ...backends import SIMULATED_HEADER, load_api_key
from .answers import Answer, compose, prompt_tokens
from .faults import GENERATION_ONLY, Fault

MAX_BODY_BYTES = 20_000_000  # Runpod's /runsync limit; larger bodies get 413
GENERATION_ROUTES = frozenset({"chat", "openai_chat", "run", "runsync"})
# The job input deploy/runpod_handler.py accepts; it refuses anything else.
RUNPOD_INPUT_FIELDS = frozenset({"messages", "model", "max_tokens", "json_output", "temperature"})
SIM_VERSION = "0.12.6"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    context_window: int = 8192
    vision: bool = False


def _ollama_name(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


@dataclass
class RunpodJob:
    id: str
    submitted: float
    queue_s: float
    exec_s: float
    outcome: str  # COMPLETED, FAILED or TIMED_OUT
    output: dict[str, Any] | None = None
    error: str | None = None
    cancelled_at: float | None = None
    seen: list[str] = field(default_factory=list)

    def status(self, now: float) -> str:
        if self.cancelled_at is not None:
            return "CANCELLED"
        if now < self.submitted + self.queue_s:
            return "IN_QUEUE"
        if self.outcome == "TIMED_OUT":
            return "TIMED_OUT"  # expired before a worker took it
        if now < self.submitted + self.queue_s + self.exec_s:
            return "IN_PROGRESS"
        return self.outcome

    def view(self, now: float) -> dict[str, Any]:
        status = self.status(now)
        body: dict[str, Any] = {"id": self.id, "status": status}
        if status != "IN_QUEUE":
            body["delayTime"] = int(self.queue_s * 1000)
        if status == "IN_PROGRESS":
            body["workerId"] = "sim-worker-1"
        if status in ("COMPLETED", "FAILED"):
            body["executionTime"] = int(self.exec_s * 1000)
            body["workerId"] = "sim-worker-1"
        if status == "COMPLETED":
            body["output"] = self.output
        if status == "FAILED":
            body["error"] = self.error
            if self.output is not None:
                body["output"] = self.output
        return body


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], host: SimHost) -> None:
        self.sim = host
        # Set when this listener goes down: in-flight answers are dropped unanswered.
        self.gone = threading.Event()
        super().__init__(address, _Handler)


class _Abort(Exception):
    """Close the connection without answering (hang released, host went down)."""


class SimHost:
    """A simulated host. ``kind`` is the config's kind; every format is served anyway."""

    def __init__(
        self,
        name: str,
        kind: str,
        port: int,
        *,
        models: list[ModelInfo],
        path: str = "",
        scale: float = 1.0,
        api_key_env: str | None = None,
        parallel: int = 4,
        bind: str = "127.0.0.1",
        runpod_queue_s: float = 1.0,
        runpod_workers: int = 2,
    ) -> None:
        self.name = name
        self.kind = kind
        self.port = port
        self.path = path.rstrip("/")
        self.models = {m.name: m for m in models}
        self.scale = scale
        self.api_key_env = api_key_env
        self.bind = bind
        self.runpod_queue_s = runpod_queue_s
        self.runpod_workers = runpod_workers
        self.counters: Counter[str] = Counter()
        self.requests: deque[dict[str, Any]] = deque(maxlen=50)
        self.jobs: dict[str, RunpodJob] = {}
        self._faults: dict[str, Fault] = {}
        self._lock = threading.RLock()
        self._slots = threading.BoundedSemaphore(max(1, parallel))
        self._released = threading.Event()  # wakes hung requests when the hang is cleared
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.bind}:{self.port}{self.path}"

    @property
    def is_up(self) -> bool:
        return self._server is not None

    def up(self) -> None:
        """Listen (again) on the same port."""
        with self._lock:
            if self._server is not None:
                return
            server = _Server((self.bind, self.port), self)
            self.port = server.server_address[1]
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"sim-{self.name}",
                daemon=True,
            )
            self._thread.start()

    def down(self) -> None:
        """Stop listening: new connections are refused, answers in flight are dropped."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        server.gone.set()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=2)

    # -- faults and counters -------------------------------------------------------

    def set_fault(self, kind: str, **params: Any) -> Fault:
        fault = Fault(kind=kind, **params)
        with self._lock:
            self._faults[kind] = fault
            if kind == "hang":
                self._released.clear()
        return fault

    def clear(self, kind: str | None = None) -> None:
        with self._lock:
            if kind is None:
                self._faults.clear()
            else:
                self._faults.pop(kind, None)
            if "hang" not in self._faults:
                self._released.set()

    def faults(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {k: f.to_dict() for k, f in self._faults.items()}

    def reset(self) -> None:
        self.clear()
        with self._lock:
            self.counters.clear()
            self.requests.clear()
            self.jobs.clear()

    def expire_jobs(self) -> int:
        """Forget every Runpod job, as Runpod does after its retention: /status then says 404."""
        with self._lock:
            n = len(self.jobs)
            self.jobs.clear()
            return n

    def take(self, kind: str, route: str | None) -> Fault | None:
        """The active fault of this kind if it applies to ``route``, using up one of its count."""
        with self._lock:
            fault = self._faults.get(kind)
            if fault is None:
                return None
            if kind in GENERATION_ONLY and not fault.all_paths and route not in GENERATION_ROUTES:
                return None
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    del self._faults[kind]
            return fault

    def peek(self, kind: str) -> Fault | None:
        with self._lock:
            return self._faults.get(kind)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "name": self.name,
                "kind": self.kind,
                "url": self.url,
                "port": self.port,
                "up": self.is_up,
                "simulated": True,
                "models": sorted(self.models),
                "faults": self.faults(),
                "counters": dict(self.counters),
                "jobs": len(self.jobs),
            }

    def count(self, route: str) -> None:
        with self._lock:
            self.counters[route] += 1
            self.counters["requests"] += 1

    def record(self, route: str, body: Any, authorized: bool) -> None:
        # Kept for contract tests (what did the client send?); never the key itself.
        with self._lock:
            self.requests.append({"route": route, "body": body, "bearer": authorized})

    def find_model(self, name: str) -> ModelInfo | None:
        if name in self.models:
            return self.models[name]
        target = _ollama_name(name)
        for m in self.models.values():
            if _ollama_name(m.name) == target:
                return m
        return None

    def key_ok(self, header: str | None) -> bool:
        """Any Bearer token, or exactly the configured one when its env var is set here."""
        if not header or not header.startswith("Bearer ") or not header[7:].strip():
            return False
        expected = load_api_key(self.api_key_env) if self.api_key_env else None
        if expected is None:
            return True
        return hmac.compare_digest(header[7:].strip(), expected.reveal())


# -- wire formats ------------------------------------------------------------------


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _text_of(content: Any) -> tuple[str, int]:
    """OpenAI content (string or parts) -> (text, number of images)."""
    if isinstance(content, str):
        return content, 0
    if isinstance(content, list):
        texts, images = [], 0
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                texts.append(str(part.get("text") or ""))
            elif isinstance(part, dict) and part.get("type") in ("image_url", "input_image"):
                images += 1
        return "\n".join(texts), images
    return "", 0


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: "down" really drops everyone
    server_version = "tierfleet-sim"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # -- plumbing ---------------------------------------------------------------------

    def _send(
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

    def _raw(self) -> bytes:
        # Read the whole body before any answer: closing with unread bytes makes the kernel
        # send a reset, and the client would see "connection reset" instead of our 401.
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise _HttpError(413, "request body too large")
        return self.rfile.read(length) if length else b""

    @staticmethod
    def _parse(raw: bytes) -> Any:
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _HttpError(400, f"invalid JSON: {exc}") from None

    def _sleep(self, seconds: float) -> None:
        if seconds > 0 and self.server.gone.wait(seconds):
            raise _Abort

    def _route(self, method: str, path: str) -> tuple[str | None, str | None]:
        """(route, runpod job id) for a path, whatever host kind this is."""
        p = path.rstrip("/") or "/"
        if p.startswith("/v2/"):
            # /v2/{endpoint}/run | runsync | health | status/{id} | cancel/{id}
            parts = p.split("/")
            op = parts[3] if len(parts) > 3 else ""
            wanted = {"run": "POST", "runsync": "POST", "health": "GET"}
            if len(parts) == 4 and wanted.get(op) == method:
                return op, None
            by_id = {"status": "GET", "cancel": "POST"}
            if len(parts) == 5 and by_id.get(op) == method:
                return op, parts[4]
            return None, None
        if p.endswith("/chat/completions") and method == "POST":
            return "openai_chat", None
        if p.endswith("/models") and method == "GET":
            return "models", None
        table = {
            ("GET", "/"): "root",
            ("HEAD", "/"): "root",
            ("GET", "/api/version"): "version",
            ("GET", "/api/tags"): "tags",
            ("HEAD", "/api/tags"): "tags",
            ("GET", "/api/ps"): "ps",
            ("POST", "/api/chat"): "chat",
        }
        return table.get((method, p)), None

    def _dispatch(self, method: str) -> None:
        host = self.server.sim
        split = urlsplit(self.path)
        route, job_id = self._route(method, split.path)
        host.count(route or "unknown")
        try:
            raw = self._raw() if method == "POST" else b""
            if host.take("hang", route) is not None:
                # Hold the connection open and say nothing until released or down.
                while not host._released.wait(0.05):
                    if self.server.gone.is_set():
                        break
                raise _Abort
            if route is None:
                self._send(404, "404 page not found", content_type="text/plain")
                return
            runpod = route in ("run", "runsync", "status", "cancel", "health")
            if runpod:
                eid = split.path.split("/")[2]
                configured = host.path.split("/")[2] if host.path.startswith("/v2/") else None
                if configured is not None and eid != configured:
                    self._send(404, {"error": f"endpoint {eid} not found"})
                    return
            authorized = host.key_ok(self.headers.get("Authorization"))
            if (runpod or host.api_key_env) and not authorized:
                self._unauthorized(route)
                return
            if host.take("auth", route) is not None:
                self._unauthorized(route)
                return
            body = self._parse(raw)
            if route in GENERATION_ROUTES:
                host.record(route, body, authorized)
                if self._http_fault(route):
                    return
            handler = getattr(self, f"_r_{route}")
            handler(body, job_id, parse_qs(split.query))
        except _HttpError as exc:
            self._send(exc.status, {"error": exc.message})
        except _Abort:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _unauthorized(self, route: str | None) -> None:
        if route == "openai_chat" or route == "models":
            self._send(
                401,
                {
                    "error": {
                        "message": "Incorrect API key provided.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                },
            )
        else:
            self._send(401, {"error": "Unauthorized"})

    def _openai_shape(self, route: str) -> bool:
        return route == "openai_chat"

    def _http_fault(self, route: str) -> bool:
        """Answer with an injected HTTP error if one applies; True when answered."""
        host = self.server.sim
        oa = self._openai_shape(route)
        fault = host.take("rate_limit", route)
        if fault is not None:
            headers = {"Retry-After": f"{fault.retry_after:g}"}
            msg = fault.message or "Rate limit reached for requests per min (simulated)"
            if oa:
                self._send(
                    429,
                    {
                        "error": {
                            "message": msg,
                            "type": "requests",
                            "param": None,
                            "code": "rate_limit_exceeded",
                        }
                    },
                    headers=headers,
                )
            else:
                self._send(429, {"error": msg}, headers=headers)
            return True
        fault = host.take("quota", route)
        if fault is not None:
            msg = fault.message or (
                "You exceeded your current quota, please check your plan and billing details. "
                "(insufficient_quota, simulated)"
            )
            if oa:
                self._send(
                    429,
                    {
                        "error": {
                            "message": msg,
                            "type": "insufficient_quota",
                            "param": None,
                            "code": "insufficient_quota",
                        }
                    },
                )
            else:
                self._send(429, {"error": msg})
            return True
        fault = host.take("error", route)
        if fault is not None:
            msg = fault.message or "The server had an error while processing your request (simulated)."
            if oa:
                self._send(
                    fault.status,
                    {
                        "error": {
                            "message": msg,
                            "type": "server_error",
                            "param": None,
                            "code": None,
                        }
                    },
                )
            else:
                self._send(fault.status, {"error": msg})
            return True
        fault = host.take("busy", route)
        if fault is not None:
            self._send(503, {"error": "server busy, please try again.  maximum pending requests exceeded"})
            return True
        return False

    def _answer(
        self,
        model: ModelInfo,
        messages: list[dict[str, Any]],
        *,
        json_output: bool,
        max_tokens: int | None,
        route: str,
    ) -> Answer:
        """Compose the answer and spend its latency, holding one of the host's parallel slots."""
        host = self.server.sim
        answer = compose(
            model.name,
            messages,
            json_output=json_output,
            max_tokens=max_tokens,
            vision=model.vision,
            scale=host.scale,
        )
        if host.take("refusal", route) is not None:
            text = f"[simulated {model.name}] I'm sorry, but I can't help with that."
            answer = dataclasses.replace(answer, text=text, finish_reason="stop",
                                         tokens_out=max(1, len(text) // 4))
        slow = host.take("slow", route)
        extra = slow.seconds if slow is not None else 0.0
        while not host._slots.acquire(timeout=0.05):
            if self.server.gone.is_set():
                raise _Abort
        try:
            self._sleep(answer.latency_s + extra)
        finally:
            host._slots.release()
        return answer

    # -- Ollama -----------------------------------------------------------------------

    def _r_root(self, body: Any, job_id: str | None, query: dict[str, list[str]]) -> None:
        self._send(200, "Ollama is running", content_type="text/plain; charset=utf-8")

    def _r_version(self, body: Any, job_id: str | None, query: dict[str, list[str]]) -> None:
        self._send(200, {"version": SIM_VERSION})

    def _tag_entry(self, m: ModelInfo) -> dict[str, Any]:
        name = _ollama_name(m.name)
        digest = hashlib.sha256(name.encode()).hexdigest()
        size_part = name.split(":")[-1].upper() if any(c.isdigit() for c in name.split(":")[-1]) else ""
        return {
            "name": name,
            "model": name,
            "modified_at": "2026-01-01T00:00:00.000000000Z",
            "size": 2_019_393_189,
            "digest": digest,
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": name.split(":")[0].split("-")[0],
                "families": [name.split(":")[0].split("-")[0]],
                "parameter_size": size_part,
                "quantization_level": "Q4_K_M",
                "context_length": m.context_window,
            },
            "capabilities": ["completion", "vision"] if m.vision else ["completion"],
        }

    def _r_tags(self, body: Any, job_id: str | None, query: dict[str, list[str]]) -> None:
        host = self.server.sim
        self._send(200, {"models": [self._tag_entry(m) for m in host.models.values()]})

    def _r_ps(self, body: Any, job_id: str | None, query: dict[str, list[str]]) -> None:
        host = self.server.sim
        models = []
        for m in host.models.values():
            entry = self._tag_entry(m)
            entry.update({"expires_at": "2099-01-01T00:00:00Z", "size_vram": entry["size"]})
            models.append(entry)
        self._send(200, {"models": models})

    def _r_chat(self, body: Any, job_id: str | None, query: dict[str, list[str]]) -> None:
        host = self.server.sim
        if not isinstance(body, dict) or not body.get("model"):
            raise _HttpError(400, "model is required")
        name = str(body["model"])
        model = host.find_model(name)
        if model is None:
            raise _HttpError(404, f"model '{name}' not found")
        messages = body.get("messages") or []
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise _HttpError(400, "messages must be a list of objects")
        if not messages:
            self._send(
                200,
                {
                    "model": name,
                    "created_at": _now_iso(),
                    "message": {"role": "assistant", "content": ""},
                    "done_reason": "load",
                    "done": True,
                },
            )
            return
        options = body.get("options") or {}
        num_predict = options.get("num_predict")
        max_tokens = int(num_predict) if isinstance(num_predict, int) and num_predict > 0 else None
        window = int(options.get("num_ctx") or model.context_window)
        n_in = prompt_tokens(messages)
        if host.take("context", "chat") is not None or n_in > window:
            if body.get("truncate", True) is False or n_in <= window:
                raise _HttpError(400, "the input length exceeds the context length")
            n_in = window  # Ollama's default: the prompt is silently cut to fit
        answer = self._answer(
            model,
            messages,
            json_output=body.get("format") is not None,
            max_tokens=max_tokens,
            route="chat",
        )
        total_ns = max(int(answer.latency_s * 1e9), 1000)
        final: dict[str, Any] = {
            "model": name,
            "created_at": _now_iso(),
            "message": {"role": "assistant", "content": answer.text},
            "done_reason": answer.finish_reason,
            "done": True,
            "total_duration": total_ns,
            "load_duration": total_ns // 100,
            "prompt_eval_count": min(answer.tokens_in, n_in),
            "prompt_eval_duration": total_ns // 5,
            "eval_count": answer.tokens_out,
            "eval_duration": total_ns - total_ns // 5 - total_ns // 100,
        }
        if host.take("no_counts", "chat") is not None:
            # Go's omitempty: a cached prompt has no prompt_eval_count at all.
            final.pop("prompt_eval_count")
            final.pop("eval_count")
        if body.get("stream", True) is False:
            self._send(200, final)
            return
        chunk = {
            "model": name,
            "created_at": final["created_at"],
            "message": {"role": "assistant", "content": answer.text},
            "done": False,
        }
        final["message"] = {"role": "assistant", "content": ""}
        lines = json.dumps(chunk) + "\n" + json.dumps(final) + "\n"
        self._send(200, lines, content_type="application/x-ndjson")

    # -- OpenAI-compatible ------------------------------------------------------------

    def _oa_error(
        self, status: int, message: str, etype: str, code: str | None, param: str | None = None
    ) -> None:
        self._send(status, {"error": {"message": message, "type": etype, "param": param, "code": code}})

    def _r_models(self, body: Any, job_id: str | None, query: dict[str, list[str]]) -> None:
        host = self.server.sim
        data = [
            {"id": m.name, "object": "model", "created": 1_767_225_600, "owned_by": "tierfleet-sim"}
            for m in host.models.values()
        ]
        self._send(200, {"object": "list", "data": data})

    def _r_openai_chat(self, body: Any, job_id: str | None, query: dict[str, list[str]]) -> None:
        host = self.server.sim
        if not isinstance(body, dict) or not body.get("model"):
            self._oa_error(400, "you must provide a model parameter", "invalid_request_error", None, "model")
            return
        name = str(body["model"])
        model = host.find_model(name)
        if model is None:
            self._oa_error(
                404,
                f"The model `{name}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            )
            return
        raw = body.get("messages")
        if not isinstance(raw, list) or not raw or not all(isinstance(m, dict) for m in raw):
            self._oa_error(
                400, "messages must be a non-empty array", "invalid_request_error", None, "messages"
            )
            return
        messages = []
        for m in raw:
            text, images = _text_of(m.get("content"))
            messages.append({"role": m.get("role"), "content": text, "images": ["x"] * images})
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        max_tokens = int(limit) if isinstance(limit, int) and limit > 0 else None
        fmt = body.get("response_format") or {}
        json_output = isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")
        n_in = prompt_tokens(messages)
        if host.take("context", "openai_chat") is not None or n_in > model.context_window:
            self._oa_error(
                400,
                f"This model's maximum context length is {model.context_window} tokens. However, "
                f"your messages resulted in {n_in} tokens. "
                "Please reduce the length of the messages.",
                "invalid_request_error",
                "context_length_exceeded",
                "messages",
            )
            return
        answer = self._answer(
            model, messages, json_output=json_output, max_tokens=max_tokens, route="openai_chat"
        )
        created = int(time.time())
        cid = (
            "chatcmpl-sim" + hashlib.sha256(f"{created}{answer.text}{uuid.uuid4()}".encode()).hexdigest()[:24]
        )
        payload: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": name,
            "system_fingerprint": "fp_tierfleet_sim",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text, "refusal": None},
                    "finish_reason": answer.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": answer.tokens_in,
                "completion_tokens": answer.tokens_out,
                "total_tokens": answer.tokens_in + answer.tokens_out,
            },
        }
        if host.take("no_counts", "openai_chat") is not None:
            payload.pop("usage")
        if not body.get("stream"):
            self._send(200, payload)
            return
        delta = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": name,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": answer.text},
                    "finish_reason": None,
                }
            ],
        }
        end = dict(delta, choices=[{"index": 0, "delta": {}, "finish_reason": answer.finish_reason}])
        stream = f"data: {json.dumps(delta)}\n\ndata: {json.dumps(end)}\n\ndata: [DONE]\n\n"
        self._send(200, stream, content_type="text/event-stream")

    # -- Runpod Serverless ------------------------------------------------------------

    def _new_job(self, body: Any) -> RunpodJob:
        host = self.server.sim
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            raise _HttpError(400, "request body must be a JSON object with an 'input' object")
        inp = body["input"]
        job_id = f"{uuid.uuid4()}-u1"
        now = time.monotonic()
        queue_s = host.runpod_queue_s * host.scale
        cold = host.peek("cold")
        if cold is not None:
            queue_s += cold.seconds
        messages = inp.get("messages")
        name = str(inp.get("model") or next(iter(host.models), "model"))
        model = host.find_model(name) or ModelInfo(name)

        def failed(error_type: str, message: str, exec_s: float = 0.05) -> RunpodJob:
            # The shape of deploy/runpod_handler.py's failures, as Runpod reports them.
            out = {"error_type": error_type, "status": None}
            return RunpodJob(job_id, now, queue_s, exec_s * host.scale, "FAILED", out, message)

        unknown = sorted(set(inp) - RUNPOD_INPUT_FIELDS)
        if unknown:
            return failed("bad_input", f"unknown input fields: {', '.join(unknown)}")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            return failed("bad_input", "messages: a non-empty list is required")
        if host.find_model(name) is None:
            return failed("model_not_found", f"The model `{name}` does not exist.")
        if host.take("timed_out", "run") is not None:
            return RunpodJob(job_id, now, queue_s, 0.0, "TIMED_OUT")
        if host.take("fail", "run") is not None:
            return failed("upstream_error", "model server error 500 (simulated)", 0.1)
        n_in = prompt_tokens(messages)
        if host.take("context", "run") is not None or n_in > model.context_window:
            return failed(
                "context_length_exceeded",
                f"This model's maximum context length is {model.context_window} tokens. "
                f"However, your messages resulted in {n_in} tokens.",
            )
        limit = inp.get("max_tokens")
        answer = compose(
            model.name,
            messages,
            json_output=bool(inp.get("json_output")),
            max_tokens=int(limit) if isinstance(limit, int) and limit > 0 else None,
            vision=model.vision,
            scale=host.scale,
        )
        slow = host.take("slow", "run")
        exec_s = answer.latency_s + (slow.seconds if slow is not None else 0.0)
        output = {
            "text": answer.text,
            "tokens_in": answer.tokens_in,
            "tokens_out": answer.tokens_out,
            "finish_reason": answer.finish_reason,
            "model": model.name,
        }
        # The clock starts once the answer is composed, so the walk is the same on a cold process.
        return RunpodJob(job_id, time.monotonic(), queue_s, exec_s, "COMPLETED", output=output)

    def _r_run(self, body: Any, job_id: str | None, query: dict[str, list[str]]) -> None:
        host = self.server.sim
        job = self._new_job(body)
        with host._lock:
            host.jobs[job.id] = job
        self._send(200, {"id": job.id, "status": "IN_QUEUE"})

    def _r_runsync(self, body: Any, job_id: str | None, query: dict[str, list[str]]) -> None:
        host = self.server.sim
        job = self._new_job(body)
        job.id = "sync-" + job.id
        with host._lock:
            host.jobs[job.id] = job
        try:
            wait_s = min(max(int(query.get("wait", ["90000"])[0]), 1000), 300_000) / 1000.0
        except ValueError:
            raise _HttpError(400, "wait must be milliseconds (1000-300000)") from None
        end = time.monotonic() + wait_s
        while job.status(time.monotonic()) not in ("COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED"):
            left = end - time.monotonic()
            if left <= 0:
                break
            self._sleep(min(0.02, left))
        self._send(200, job.view(time.monotonic()))

    def _job(self, job_id: str | None) -> RunpodJob:
        host = self.server.sim
        with host._lock:
            job = host.jobs.get(job_id or "")
        if job is None:
            raise _HttpError(404, f"job {job_id} not found")
        return job

    def _r_status(self, body: Any, job_id: str | None, query: dict[str, list[str]]) -> None:
        job = self._job(job_id)
        view = job.view(time.monotonic())
        with self.server.sim._lock:
            if not job.seen or job.seen[-1] != view["status"]:
                job.seen.append(view["status"])
        self._send(200, view)

    def _r_cancel(self, body: Any, job_id: str | None, query: dict[str, list[str]]) -> None:
        job = self._job(job_id)
        now = time.monotonic()
        if job.status(now) in ("IN_QUEUE", "IN_PROGRESS"):
            job.cancelled_at = now
        self._send(200, {"id": job.id, "status": job.status(now)})

    def _r_health(self, body: Any, job_id: str | None, query: dict[str, list[str]]) -> None:
        host = self.server.sim
        now = time.monotonic()
        with host._lock:
            states = Counter(j.status(now) for j in host.jobs.values())
        workers = 0 if host.peek("cold") is not None else host.runpod_workers
        running = min(states["IN_PROGRESS"], workers)
        self._send(
            200,
            {
                "jobs": {
                    "completed": states["COMPLETED"],
                    "failed": states["FAILED"] + states["TIMED_OUT"],
                    "inProgress": states["IN_PROGRESS"],
                    "inQueue": states["IN_QUEUE"],
                    "retried": 0,
                },
                "workers": {"idle": max(workers - running, 0), "running": running},
            },
        )


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
