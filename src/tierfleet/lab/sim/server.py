"""One simulated model host on its own loopback port, and the route table.

It speaks three wire formats, chosen by path, with the shapes each vendor
documents, one module each (:mod:`.ollama`, :mod:`.openai`, :mod:`.runpod`):
Ollama (``/``, ``/api/version``, ``/api/tags``, ``/api/ps``, ``/api/chat``),
OpenAI-compatible (any ``.../chat/completions`` and ``.../models``, so ``/v1``
and Ollama's ``/v1`` both work) and Runpod Serverless
(``/v2/{endpoint}/run|runsync|status/{id}|cancel/{id}|health``). Every answer
carries ``x-tierfleet-simulated: 1``; texts say ``[simulated <model>]``.

Built on the standard library's ThreadingHTTPServer rather than uvicorn: it
starts in milliseconds, needs no event loop, and one port can really stop
listening ("down" gives connection refused) and listen again ("up").
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import Counter, deque
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ...backends import load_api_key
from . import ollama, openai, runpod
from .faults import GENERATION_ONLY, Fault
from .runpod import RunpodJob
from .wire import GENERATION_ROUTES, Abort, Exchange, HttpError, Listener, ModelInfo, Route, ollama_name

__all__ = ["SimHost"]


class _Server(Listener):
    def __init__(self, address: tuple[str, int], host: SimHost) -> None:
        self.sim = host
        # Set when this listener goes down: in-flight answers are dropped unanswered.
        self.gone = threading.Event()
        super().__init__(address, _Handler)


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
        # Every generation request as it arrived (before any fault): its route and the
        # start of its body, so a test can tell which job each billable call was for.
        self.calls: deque[dict[str, Any]] = deque(maxlen=100_000)
        self.jobs: dict[str, RunpodJob] = {}
        self._faults: dict[str, Fault] = {}
        self._lock = threading.RLock()
        self._slots = threading.BoundedSemaphore(max(1, parallel))
        self._released = threading.Event()  # wakes hung requests when the hang is cleared
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None


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
        self._take_backlog(server)
        server.server_close()
        if thread is not None:
            thread.join(timeout=2)


    @staticmethod
    def _take_backlog(server: _Server) -> None:
        """Connections the kernel accepted that the server had not taken yet: their clients
        have sent their requests, and closing the socket would reset them unseen (a call
        the client must count as possibly billed, that the host never counted). Take them
        in instead: each is counted, then dropped unanswered like any answer in flight."""
        sock = server.socket
        sock.setblocking(False)
        while True:
            try:
                conn, addr = sock.accept()
            except OSError:  # BlockingIOError: the backlog is empty
                return
            conn.setblocking(True)
            server.process_request(conn, addr)

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
            self.calls.clear()
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

    def log_call(self, route: str, raw: bytes) -> None:
        with self._lock:
            self.calls.append({"route": route, "body": raw[:20000].decode(errors="replace"),
                               "ts": time.time()})

    def record(self, route: str, body: Any, authorized: bool) -> None:
        # Kept for contract tests (what did the client send?); never the key itself.
        with self._lock:
            self.requests.append({"route": route, "body": body, "bearer": authorized})

    def find_model(self, name: str) -> ModelInfo | None:
        if name in self.models:
            return self.models[name]
        target = ollama_name(name)
        for m in self.models.values():
            if ollama_name(m.name) == target:
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


def route_for(method: str, path: str) -> tuple[str | None, Route | None, str | None]:
    """(route name, its answer, Runpod job id) for a request, whatever kind the host is."""
    p = path.rstrip("/") or "/"
    if p.startswith("/v2/"):
        # /v2/{endpoint}/run | runsync | health | status/{id} | cancel/{id}
        parts = p.split("/")
        op = parts[3] if len(parts) > 3 else ""
        known = runpod.OPERATIONS.get(op)
        if known is None or known[0] != method or len(parts) != (5 if known[2] else 4):
            return None, None, None
        return op, known[1], parts[4] if known[2] else None
    found = openai.is_route(method, p)
    if found is not None:
        return found[0], found[1], None
    name, answer = ollama.ROUTES.get((method, p), (None, None))
    return name, answer, None


class _Handler(Exchange):
    server: _Server

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        host = self.host
        split = urlsplit(self.path)
        route, answer, job_id = route_for(method, split.path)
        host.count(route or "unknown")
        try:
            raw = self.raw() if method == "POST" else b""
            if route in GENERATION_ROUTES:
                host.log_call(route, raw)
            if self.server.gone.is_set():
                raise Abort  # taken from the backlog as the host went down
            if host.take("hang", route) is not None:
                # Hold the connection open and say nothing until released or down.
                while not host._released.wait(0.05):
                    if self.server.gone.is_set():
                        break
                raise Abort
            if route is None or answer is None:
                self.send(404, "404 page not found", content_type="text/plain")
                return
            is_runpod = route in runpod.OPERATIONS
            if is_runpod:
                eid = split.path.split("/")[2]
                configured = host.path.split("/")[2] if host.path.startswith("/v2/") else None
                if configured is not None and eid != configured:
                    self.send(404, {"error": f"endpoint {eid} not found"})
                    return
            authorized = host.key_ok(self.headers.get("Authorization"))
            if (is_runpod or host.api_key_env) and not authorized:
                self._unauthorized(route)
                return
            if host.take("auth", route) is not None:
                self._unauthorized(route)
                return
            body = self.parse(raw)
            if route in GENERATION_ROUTES:
                host.record(route, body, authorized)
                if self._http_fault(route):
                    return
            answer(self, body, job_id, parse_qs(split.query))
        except HttpError as exc:
            self.send(exc.status, {"error": exc.message})
        except Abort:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _unauthorized(self, route: str | None) -> None:
        if route == "openai_chat" or route == "models":
            self.send(
                401,
                openai.error_body("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
            )
        else:
            self.send(401, {"error": "Unauthorized"})

    def _http_fault(self, route: str) -> bool:
        """Answer with an injected HTTP error if one applies; True when answered."""
        host = self.host
        oa = route == "openai_chat"  # the other protocols answer {"error": "..."}
        fault = host.take("rate_limit", route)
        if fault is not None:
            headers = {"Retry-After": f"{fault.retry_after:g}"}
            msg = fault.message or "Rate limit reached for requests per min (simulated)"
            if oa:
                self.send(
                    429,
                    openai.error_body(msg, "requests", "rate_limit_exceeded"),
                    headers=headers,
                )
            else:
                self.send(429, {"error": msg}, headers=headers)
            return True
        fault = host.take("quota", route)
        if fault is not None:
            msg = fault.message or (
                "You exceeded your current quota, please check your plan and billing details. "
                "(insufficient_quota, simulated)"
            )
            if oa:
                self.send(
                    429,
                    openai.error_body(msg, "insufficient_quota", "insufficient_quota"),
                )
            else:
                self.send(429, {"error": msg})
            return True
        fault = host.take("error", route)
        if fault is not None:
            msg = fault.message or "The server had an error while processing your request (simulated)."
            if oa:
                self.send(
                    fault.status,
                    openai.error_body(msg, "server_error", None),
                )
            else:
                self.send(fault.status, {"error": msg})
            return True
        fault = host.take("busy", route)
        if fault is not None:
            self.send(503, {"error": "server busy, please try again.  maximum pending requests exceeded"})
            return True
        return False
