"""Faults a simulated host can be told to show, through the admin endpoint or in-process."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

FaultKind = Literal[
    "hang",  # accept the connection and never answer (every path, health too)
    "slow",  # add ``seconds`` (wall clock, not scaled) to each answer
    "rate_limit",  # 429 with Retry-After: ``retry_after`` seconds
    "quota",  # 429 insufficient_quota: billing exhausted
    "error",  # ``status`` (default 500) server error
    "busy",  # Ollama's 503 "server busy"
    "context",  # the host's own context-length error
    "auth",  # 401 whatever the key
    "fail",  # Runpod: the job ends FAILED
    "timed_out",  # Runpod: the job ends TIMED_OUT
    "cold",  # Runpod: no worker up; jobs wait ``seconds`` more in the queue
    "no_counts",  # answers omit token counts (Ollama omits them when the prompt is cached)
    "refusal",  # a well-formed answer that refuses: what the quality check must catch
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)

# Faults that only touch generation requests unless ``all_paths`` is set; health
# checks keep answering, as a real host's do while its model errors.
GENERATION_ONLY = frozenset(
    {
        "slow",
        "rate_limit",
        "quota",
        "error",
        "busy",
        "context",
        "auth",
        "fail",
        "timed_out",
        "no_counts",
        "refusal",
    }
)


@dataclass
class Fault:
    kind: str
    seconds: float = 0.0
    retry_after: float = 1.0
    status: int = 500
    count: int | None = None  # None: until cleared; N: the next N requests only
    all_paths: bool = False
    message: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {self.kind!r}; one of {', '.join(FAULT_KINDS)}")
        if self.count is not None and self.count < 1:
            raise ValueError("count must be >= 1 (or omitted for 'until cleared')")
        if self.seconds < 0 or self.retry_after < 0:
            raise ValueError("seconds and retry_after must be >= 0")
        if not 400 <= self.status <= 599:
            raise ValueError("status must be an HTTP error status (400-599)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
