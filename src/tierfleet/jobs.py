"""The typed edges of the fleet: a Job in, a Route decided, a Result out.

Everything that crosses Redis is one of these models dumped to JSON, so a
producer, a dispatcher and a worker on different machines agree on the shape.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Kind(StrEnum):
    # Rules kinds: no model, no cost.
    DEDUPE = "dedupe"
    JSON_VALIDATE = "json_validate"
    REGEX_EXTRACT = "regex_extract"
    LOG_SLICE = "log_slice"
    KEYWORD_ROUTE = "keyword_route"
    # Model kinds.
    CLASSIFICATION = "classification"
    EXTRACTION = "extraction"
    SUMMARY = "summary"
    CHAT = "chat"
    CODE = "code"
    REASONING = "reasoning"
    VISION = "vision"
    TRANSLATION = "translation"
    WRITING = "writing"
    # The classifier decides.
    AUTO = "auto"


RULES_KINDS: frozenset[Kind] = frozenset(
    {Kind.DEDUPE, Kind.JSON_VALIDATE, Kind.REGEX_EXTRACT, Kind.LOG_SLICE, Kind.KEYWORD_ROUTE}
)
MODEL_KINDS: frozenset[Kind] = frozenset(set(Kind) - RULES_KINDS - {Kind.AUTO})


class Risk(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class Privacy(StrEnum):
    PUBLIC = "public"
    INTERNAL = "internal"
    CONFIDENTIAL = "confidential"


class UserTier(StrEnum):
    FREE = "free"
    STANDARD = "standard"
    PREMIUM = "premium"


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    # Base64 images, as Ollama takes them; the OpenAI client turns them into data URLs.
    images: list[str] = Field(default_factory=list)
    # An assistant turn that called functions (OpenAI's shape), and a tool turn's answer
    # to one of them, so a multi-turn tool conversation goes through unchanged.
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


def _new_id() -> str:
    return uuid.uuid4().hex


class Job(BaseModel):
    """One unit of work. Unknown fields are rejected so a typo never routes silently."""

    # No NaN/Infinity in a float field, even spelled as a string: RFC 8259 has neither.
    model_config = ConfigDict(extra="forbid", use_enum_values=False, allow_inf_nan=False)

    id: str = Field(default_factory=_new_id, min_length=1, max_length=128, pattern=r"^[\w.:-]+$")
    kind: Kind = Kind.AUTO
    prompt: str | None = None
    messages: list[Message] | None = None
    images: list[str] = Field(default_factory=list, description="base64 images (vision)")
    input: dict[str, Any] | None = Field(
        default=None, description="kind-specific payload, e.g. the JSON Schema for json_validate"
    )
    risk: Risk = Risk.LOW
    privacy: Privacy = Privacy.INTERNAL
    workflow: str = Field(default="default", min_length=1, max_length=128)
    user_tier: UserTier = UserTier.STANDARD
    session: str | None = Field(default=None, max_length=128)
    max_cost_usd: float | None = Field(default=None, ge=0)
    latency_budget_s: float | None = Field(default=None, gt=0)
    tier: str | None = Field(default=None, description="explicit tier override (within privacy)")
    model: str | None = Field(default=None, description="explicit model override (within privacy)")
    max_tokens: int | None = Field(default=None, gt=0, le=131072)
    json_output: bool = Field(default=False, description="ask the model for a JSON answer")
    json_schema: dict[str, Any] | None = Field(
        default=None, description="the answer must be JSON valid against this JSON Schema; "
        "hosts that support it constrain decoding, and the fleet validates and escalates")
    tools: list[dict[str, Any]] | None = Field(
        default=None, description="functions the model may call (OpenAI's tools shape)")
    stream: bool = Field(default=False, description="stream tokens to P:stream:{id} as "
                         "the host produces them (the API's stream=true)")
    tool_choice: str | dict[str, Any] | None = Field(
        default=None, description='"auto", "none", "required" or a named function')
    cache: bool = Field(default=True, description="allow an answer from the exact-match cache")
    metadata: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _has_what_its_kind_needs(self) -> Job:
        if self.kind in RULES_KINDS:
            if self.input is None:
                raise ValueError(f"input: a {self.kind.value} job needs an 'input' payload")
        elif not self.prompt and not self.messages:
            raise ValueError(f"prompt: a {self.kind.value} job needs a 'prompt' or 'messages'")
        return self

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("prompt is empty")
        return v

    @property
    def is_rules(self) -> bool:
        return self.kind in RULES_KINDS

    def text(self) -> str:
        """The job's words as one string: what the router reads and the tokenizer counts."""
        if self.prompt is not None:
            return self.prompt
        if self.messages:
            return "\n".join(m.content for m in self.messages)
        return ""

    def chat_messages(self) -> list[Message]:
        if self.messages:
            return list(self.messages)
        return [Message(role="user", content=self.prompt or "", images=list(self.images))]

    def has_images(self) -> bool:
        return bool(self.images) or any(m.images for m in self.messages or [])


class Reason(BaseModel):
    stage: str
    text: str


class Route(BaseModel):
    """The dispatcher's decision: where the job goes first and where it may go next."""

    model_config = ConfigDict(extra="forbid")

    tier: str
    kind: Kind
    model: str | None = None
    host: str | None = None
    fallbacks: list[str] = Field(default_factory=list, description="privacy-filtered chain")
    p_small_ok: float | None = None
    tokens_in: int = 0
    review: bool = False
    reasons: list[Reason] = Field(default_factory=list)
    # The policy version that made this route (``policy/versions.py``); None: unversioned.
    policy_version: str | None = None

    def explain(self) -> list[str]:
        return [f"{r.stage}: {r.text}" for r in self.reasons]


class Status(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PARKED = "parked"
    DEAD = "dead"
    # Not a state a job is in: the answer for an id Redis has no record of at all.
    UNKNOWN = "unknown"


# A job in one of these states is finished: nothing will change its stored result.
TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.DEAD})


class Attempt(BaseModel):
    """One try of a job at one place; the ledger keeps one per attempt."""

    job_id: str
    attempt: int
    workflow: str
    kind: str
    tier: str
    host: str | None = None
    model: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_estimated: bool = False
    latency_s: float = 0.0
    cost_usd: float = 0.0
    baseline_cost_usd: float = 0.0
    # host_error: the host was called and answered an error (or timed out); lost_call: the
    # host was called and the worker died before it could record what came back.
    outcome: Literal["ok", "fallback", "escalated", "failed", "cached", "host_error",
                     "lost_call"] = "ok"
    # One id per host call: the ledger keeps one record per call a provider may bill.
    call: str | None = None
    cache_hit: bool = False
    fallbacks: int = 0
    error: str | None = None
    privacy: str = Privacy.INTERNAL.value
    simulated: bool = False
    ts: float = 0.0
    # The policy version whose route this attempt followed: a rollout is judged per version.
    policy_version: str | None = None


class Result(BaseModel):
    """What happened to a job, as the result store keeps it under ``P:result:{job_id}``.

    The dispatcher writes it PENDING, the runner writes every later state; producers,
    the API and the CLI read it. Once SUCCEEDED, FAILED or DEAD it never changes
    (the store keeps the first final one). ``text`` is the model's words; ``output``
    is the kind's answer: the same text for model kinds, the executor's structured
    result for rules kinds. ``cost_usd`` is the job's whole bill over every attempt.
    """

    job_id: str
    status: Status
    kind: str | None = None
    output: Any = None
    text: str | None = None
    tier: str | None = None
    host: str | None = None
    model: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_estimated: bool = False
    cost_usd: float = 0.0
    latency_s: float = 0.0
    attempts: int = 1
    trail: list[str] = Field(default_factory=list)
    cache_hit: bool = False
    simulated: bool = False
    error: str | None = None
    # What the host said about its answer: why it stopped ("stop", "length",
    # "tool_calls"), the model name it reported, and function calls in OpenAI's shape.
    finish_reason: str | None = None
    served_model: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    # The route's reasons (dispatcher stages, then every worker move), for the caller.
    reasons: list[str] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status is Status.SUCCEEDED

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL
