"""A Backend that answers from a script, in process: the double for unit tests of the runner.

Shipped in the package, beside the real clients and behind the same protocol, so
tests (ours and a user's) can drive :class:`~tierfleet.runner.Runner` through every
branch without a host, a port or a process::

    gpu = StubBackend("gpu", answers=["def f(): ...", HostDown("gpu", "refused")])
    runner = Runner(config, fakeredis.FakeRedis(decode_responses=True), published.append,
                    backend_for={"gpu": gpu}.__getitem__)

Each :meth:`complete` records the request and takes the next scripted answer: a
string becomes a :class:`Completion`, a :class:`BackendError` is raised. When the
script runs out the last answer repeats, so "this host is down" stays true.
"""

from __future__ import annotations

from collections.abc import Iterable

from .base import BackendError, Completion, CompletionRequest, HostDown, HostHealth

__all__ = ["StubBackend"]


class StubBackend:
    """A scripted host. ``healthy=False`` makes :meth:`health` report it down."""

    def __init__(self, name: str, *, answers: Iterable[str | BackendError | Completion] = (),
                 healthy: bool = True, tokens_in: int | None = 10,
                 tokens_out: int | None = 5) -> None:
        self.name = name
        self.healthy = healthy
        self.requests: list[CompletionRequest] = []
        self.health_checks = 0
        self._script: list[str | BackendError | Completion] = list(answers)
        self._last: str | BackendError | Completion | None = None
        self._tokens = (tokens_in, tokens_out)

    def script(self, *answers: str | BackendError | Completion) -> StubBackend:
        """Queue more answers (after those not yet given)."""
        self._script.extend(answers)
        return self

    def complete(self, request: CompletionRequest) -> Completion:
        self.requests.append(request)
        if self._script:
            self._last = self._script.pop(0)
        answer = self._last
        if answer is None:
            raise HostDown(self.name, "stub backend has no scripted answer")
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, Completion):
            return answer
        tin, tout = self._tokens
        return Completion(text=answer, model=request.model, host=self.name, tokens_in=tin,
                          tokens_out=tout, latency_s=0.01, finish_reason="stop")

    def health(self) -> HostHealth:
        self.health_checks += 1
        return HostHealth(host=self.name, ok=self.healthy,
                          detail="ok" if self.healthy else "stub backend set unhealthy")
