"""The fleet's one config file: tiers, hosts, models, prices, policy and limits.

Resolution order for the file: an explicit path, then ``TIERFLEET_CONFIG``, then
``./fleet.toml``, then the built-in ``defaults.toml`` shipped with the package.
Environment variables (``TIERFLEET_REDIS_URL``, ``TIERFLEET_POLICY__P_SMALL_OK_THRESHOLD``,
...) override whatever the file says, so one file can serve every machine.
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .errors import ConfigError

DEFAULT_TIERS = ("rules", "local-mac", "local-gpu", "runpod", "paid")
_BUILTIN = Path(__file__).with_name("defaults.toml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HostConfig(_Strict):
    """One model server a tier reaches."""

    kind: Literal["ollama", "openai", "runpod"]
    url: str
    tier: str
    models: list[str] = Field(default_factory=list)
    # Name of the environment variable that holds the key: the key itself never
    # sits in this file, in Redis or in a log line.
    api_key_env: str | None = None
    timeout_s: float = Field(default=120.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    context_window: int = Field(default=8192, gt=0)
    cost_per_hour: float = Field(default=0.0, ge=0, description="amortised or rented, USD")
    cost_per_second: float | None = Field(default=None, ge=0, description="Runpod Serverless")
    # Simulated hosts answer on loopback for the demo, tests and benchmarks only.
    simulated: bool = False


class ModelConfig(_Strict):
    input_per_mtok: float | None = Field(default=None, ge=0, description="USD per 1M input tokens")
    output_per_mtok: float | None = Field(default=None, ge=0, description="USD per 1M output")
    context_window: int | None = Field(default=None, gt=0)
    vision: bool = False
    # Function calling: jobs with ``tools`` are kept off tiers whose model cannot. Most
    # current chat models can; set false for one that cannot (a tiny or base model).
    tools: bool = True
    # Constrained decoding to a JSON Schema (Ollama ``format``, OpenAI ``json_schema``);
    # without it the schema goes in the prompt and the fleet's validation still applies.
    json_schema: bool = True


class TierConfig(_Strict):
    # local: our own hardware (allowed for confidential jobs); rented: a GPU paid
    # by time (Runpod); paid: a provider billed by token; rules: no model.
    place: Literal["rules", "local", "rented", "paid"]
    # Which model this tier uses for a job kind; "default" for the rest.
    models: dict[str, str] = Field(default_factory=dict)
    fallback: list[str] = Field(default_factory=list)
    concurrency: int = Field(default=1, ge=1)

    def model_for(self, kind: str) -> str | None:
        return self.models.get(kind) or self.models.get("default")


class PolicyConfig(_Strict):
    kind_tiers: dict[str, str] = Field(
        default_factory=lambda: {
            "classification": "local-mac",
            "extraction": "local-mac",
            "summary": "local-mac",
            "translation": "local-mac",
            "chat": "local-mac",
            "code": "local-gpu",
            "reasoning": "local-gpu",
            "vision": "local-gpu",
            "writing": "paid",
        }
    )
    classifier: Literal["learned", "keyword"] = "learned"
    p_small_ok_threshold: float = Field(default=0.75, ge=0, le=1)
    large_job_tokens: int = Field(default=50_000, gt=0)
    large_job_tier: str = "runpod"
    high_risk_tier: str = "paid"
    premium_tier: str | None = "paid"
    spill_order: list[str] = Field(default_factory=lambda: ["local-gpu", "runpod", "paid"])
    session_memory: int = Field(default=3, ge=0)
    short_chat_tokens: int = Field(default=400, gt=0)
    # kind -> seconds: the latency budget of a job of that kind that sets none itself. The
    # load stage spills such a job down spill_order when the queue ahead of it (depth x
    # measured service time / live workers) would blow it. Empty: only jobs' own budgets.
    latency_budgets_s: dict[str, float] = Field(default_factory=dict)


class RuleBounds(_Strict):
    """One rules kind's own bounds (``[limits.rules.KIND]``); unset fields take ``[limits.rules]``."""

    cpu_s: float | None = Field(default=None, gt=0)
    memory_mb: int | None = Field(default=None, gt=0)
    output_bytes: int | None = Field(default=None, gt=0)
    isolation: Literal["fork", "inline"] | None = None


class ResolvedBounds(BaseModel):
    kind: str
    cpu_s: float
    memory_mb: int
    output_bytes: int
    isolation: Literal["fork", "inline"]


class RulesLimits(_Strict):
    """What one rules job may spend when it runs (``[limits.rules]``), with per-kind overrides.

    ``isolation = "fork"`` runs each job in a forked child under ``RLIMIT_AS`` (memory)
    and a CPU-time timer (with ``RLIMIT_CPU`` as the backstop for C code that never
    returns to Python), so a blow-up costs the child, never the worker. ``inline``
    runs in the worker itself: a CPU timer on the main thread only, and no memory bound.
    """

    cpu_s: float = Field(default=5.0, gt=0)
    memory_mb: int = Field(default=512, gt=0)
    output_bytes: int = Field(default=4_000_000, gt=0)
    isolation: Literal["fork", "inline"] = "fork"
    # Submit-time bounds of a json_validate schema: its own size, and how many
    # subschema visits one pass makes once every $ref and allOf/anyOf/... is expanded.
    max_schema_nodes: int = Field(default=10_000, gt=0)
    max_schema_expansion: int = Field(default=100_000, gt=0)
    dedupe: RuleBounds = Field(default_factory=RuleBounds)
    json_validate: RuleBounds = Field(default_factory=RuleBounds)
    regex_extract: RuleBounds = Field(default_factory=RuleBounds)
    log_slice: RuleBounds = Field(default_factory=RuleBounds)
    # keyword_route is substring tests of configured words over text the submit limits
    # already bound: it cannot blow up memory or loop, so the fork (~2.5 ms a job on a busy
    # 2-core box, more than the job) buys nothing; its CPU timer still runs inline.
    keyword_route: RuleBounds = Field(default_factory=lambda: RuleBounds(isolation="inline"))

    def for_kind(self, kind: str) -> ResolvedBounds:
        own = getattr(self, kind, None)
        own = own if isinstance(own, RuleBounds) else RuleBounds()
        return ResolvedBounds(
            kind=kind,
            cpu_s=own.cpu_s if own.cpu_s is not None else self.cpu_s,
            memory_mb=own.memory_mb if own.memory_mb is not None else self.memory_mb,
            output_bytes=own.output_bytes if own.output_bytes is not None else self.output_bytes,
            isolation=own.isolation if own.isolation is not None else self.isolation,
        )


class LimitsConfig(_Strict):
    max_prompt_chars: int = Field(default=400_000, gt=0)
    max_payload_bytes: int = Field(default=2_000_000, gt=0)
    max_messages: int = Field(default=200, gt=0)
    max_images: int = Field(default=8, ge=0)
    # One decoded image; it also counts (as base64) against max_payload_bytes.
    max_image_bytes: int = Field(default=2_000_000, gt=0)
    max_batch: int = Field(default=100_000, gt=0)
    # All of one submit_many batch, as JSON: what one call may put on the queues.
    max_batch_bytes: int = Field(default=64_000_000, gt=0)
    # Containers nested deeper than this anywhere in a job are rejected before any
    # recursive code (pydantic, json, jsonschema) sees them; real documents nest a few deep.
    max_json_depth: int = Field(default=64, gt=0, le=500)
    regex_timeout_s: float = Field(default=1.0, gt=0)
    max_regex_chars: int = Field(default=2_000, gt=0)
    rules: RulesLimits = Field(default_factory=RulesLimits)


class ReliabilityConfig(_Strict):
    visibility_timeout_s: int = Field(default=3600, gt=0)
    task_time_limit_s: int = Field(default=1800, gt=0)
    max_attempts: int = Field(default=8, ge=1)
    park_backoff_s: list[float] = Field(default_factory=lambda: [2, 5, 15, 30, 60, 120, 300])
    health_timeout_s: float = Field(default=2.0, gt=0)
    health_cache_s: float = Field(default=5.0, ge=0)
    breaker_failures: int = Field(default=2, ge=1)
    breaker_open_s: float = Field(default=30.0, gt=0)
    retry_after_budget_s: float = Field(default=10.0, ge=0)
    heartbeat_s: float = Field(default=2.0, gt=0)
    dead_after_s: float = Field(default=10.0, gt=0)
    # A worker whose queue holds jobs while it holds none for this long has stopped
    # consuming (seen after broker reconnects); it shuts down warm so its process
    # manager restarts it. 0 turns the watchdog off.
    stall_restart_s: float = Field(default=120.0, ge=0)
    result_expires_s: int = Field(default=7 * 24 * 3600, gt=0)
    # The repair sweep: an open (non-final) job unchanged for repair_after_s with no
    # message in any queue, unacked or parked, in two sweeps repair_every_s apart, is
    # sent again from its kept delivery (or dead-lettered when none was kept).
    repair_after_s: float = Field(default=60.0, gt=0)
    repair_every_s: float = Field(default=10.0, gt=0)
    # What an acknowledged submit promises (deploy/redis.conf says what each costs):
    # "none": in Redis's memory (appendfsync everysec may lose the last ~1 s of them);
    # "aof_local": fsynced to the primary's AOF (WAITAOF 1 0, Redis >= 7.2, or a server
    #   already running appendfsync always); "replicas": on durable_replicas replicas
    #   (WAITAOF 0 N on >= 7.2: in their AOF; WAIT N before: in their memory).
    durable_submit: Literal["none", "aof_local", "replicas"] = "none"
    durable_replicas: int = Field(default=1, ge=1)
    durable_timeout_ms: int = Field(default=1000, gt=0)

    @model_validator(mode="after")
    def _time_limit_below_visibility(self) -> ReliabilityConfig:
        # A job outliving the visibility timeout is redelivered while still running.
        if self.task_time_limit_s >= self.visibility_timeout_s:
            raise ValueError(
                "reliability.task_time_limit_s must stay below visibility_timeout_s "
                f"({self.task_time_limit_s} >= {self.visibility_timeout_s})"
            )
        return self


class LedgerConfig(_Strict):
    dir: str = "tierfleet-ledger"
    # The ledger's database (SQLAlchemy URL): "sqlite:///tierfleet-ledger/ledger.db" on one
    # machine, "postgresql+psycopg://user@host/db" for a fleet. Unset: Redis and JSONL only.
    url: str | None = None
    # How long Redis keeps records (days): the whole history without a database, a short
    # window (budgets and today's reports) once ``url`` holds it.
    redis_retention_days: float | None = Field(default=None, gt=0)
    baseline_model: str | None = None
    alert_cost_increase: float = Field(default=0.20, ge=0)
    max_fallback_rate: float = Field(default=0.20, ge=0, le=1)
    max_escalation_rate: float = Field(default=0.15, ge=0, le=1)
    # The period the exporter's tierfleet_route_* gauges cover (compared with the one before).
    route_window_s: float = Field(default=86_400.0, gt=0)

    def redis_days(self) -> float:
        if self.redis_retention_days is not None:
            return self.redis_retention_days
        return 400.0 if self.url is None else 3.0


class BudgetConfig(_Strict):
    """One spending limit (``[budgets.NAME]``); ``tierfleet budget set`` overrides it at run time.

    ``scope`` is ``fleet``, ``workflow:NAME``, ``tag:NAME`` (a tag in the job's
    ``metadata["tags"]``, comma separated) or ``user_tier:NAME``. Only rented and paid
    calls count: our own hardware has no marginal cost.
    """

    scope: str = "fleet"
    limit_usd: float = Field(ge=0)
    period: Literal["day", "month"] = "day"
    # What a job that cannot reserve its estimate does: an allowed cheaper tier (else it
    # parks), wait in the parked set until the period resets, or fail with the reason.
    on_exhausted: Literal["cheaper", "park", "reject"] = "cheaper"
    alerts: list[float] = Field(default_factory=lambda: [0.8, 1.0])

    @model_validator(mode="after")
    def _known_scope(self) -> BudgetConfig:
        kind, _, value = self.scope.partition(":")
        if kind == "fleet" and not value:
            return self
        if kind not in ("workflow", "tag", "user_tier") or not value:
            raise ValueError(f"scope {self.scope!r}: use fleet, workflow:NAME, tag:NAME or user_tier:NAME")
        return self


class FlowConfig(_Strict):
    """A provider's limits on a host or an account (``[flow.NAME]``), shared by every worker.

    ``hosts`` lists the hosts that draw on it: one host, or every host of one account.
    ``window_s`` is the length of the provider's "minute" (tests scale it down);
    ``safety`` widens our window a little, so requests that leave the workers a few
    milliseconds apart still reach the provider inside its own limit.
    """

    hosts: list[str] = Field(min_length=1)
    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)
    concurrency: int | None = Field(default=None, gt=0)
    window_s: float = Field(default=60.0, gt=0)
    safety: float = Field(default=0.05, ge=0, le=1)


class CacheConfig(_Strict):
    enabled: bool = True
    ttl_s: int = Field(default=24 * 3600, gt=0)


class KeywordRule(_Strict):
    label: str
    any: list[str]


class RulesConfig(_Strict):
    # The seed's detect_ticket_type, as data; replace it with your own labels.
    keyword_routes: list[KeywordRule] = Field(
        default_factory=lambda: [
            KeywordRule(label="vpn", any=["vpn"]),
            KeywordRule(label="email", any=["outlook", "email"]),
        ]
    )
    default_label: str = "review"


class ApiConfig(_Strict):
    # Names of environment variables holding producer tokens (comma separated values allowed).
    tokens_env: str = "TIERFLEET_API_TOKENS"
    max_body_bytes: int = Field(default=4_000_000, gt=0)
    # As long as the OpenAI SDK waits by default (600 s): the client's timeout, not ours,
    # decides when to give up, so a slow job is not answered 504 and retried as a new call.
    wait_timeout_s: float = Field(default=600.0, gt=0)
    # How long a request's fingerprint is kept for the SDK's retries to attach to its job:
    # a retry comes after a whole client timeout plus backoff.
    retry_window_s: float = Field(default=900.0, gt=0)


class RedisConfig(_Strict):
    """How to reach Redis when ``redis_url``/``result_url`` name Sentinels:
    ``redis_url = "sentinel://h1:26379;sentinel://h2:26379;sentinel://h3:26379/0"``
    (every sentinel, the database once at the end; a password as in
    ``sentinel://:PASSWORD@h1:26379;...`` is the Redis primary's)."""

    sentinel_master: str | None = Field(default=None, description="Sentinel's name of the primary")
    # Sentinels that answer to a different password than the primary's (rare).
    sentinel_password_env: str | None = None
    sentinel_socket_timeout_s: float = Field(default=1.0, gt=0)


class ShadowConfig(_Strict):
    """Shadow sampling: a share of small-answered jobs is also sent to the strong tier and a
    judge scores both answers, so the router learns where the small model falls short on
    this fleet's own traffic (issue #15). Off by default: every sample is a paid call."""

    rate: float = Field(default=0.0, ge=0, le=1, description="share of small-answered jobs sampled")
    # Per workflow or kind, overriding ``rate``: {"workflow:support" = 0.2, "kind:code" = 0.1}.
    rates: dict[str, float] = Field(default_factory=dict)
    daily_budget_usd: float = Field(default=1.0, ge=0, description="estimated spend per UTC day")
    strong_tier: str = "paid"
    judge: Literal["auto", "deterministic", "rubric"] = "auto"


class LearningConfig(_Strict):
    """The learning loop: labels from the fleet, the bad-answer memory, policy versions."""

    labels: bool = Field(default=True, description="keep labels from feedback and escalations")
    label_retention_days: float = Field(default=90.0, gt=0)
    memory: bool = Field(default=False, description="the dispatcher's policy reads the memory")
    memory_reload_s: float = Field(default=5.0, ge=0)
    shadow: ShadowConfig = Field(default_factory=ShadowConfig)
    policy_dir: str = "tierfleet-policies"
    versions: bool = Field(default=False, description="route with the promoted policy version")
    versions_reload_s: float = Field(default=5.0, ge=0)
    tolerance: float = Field(default=0.05, ge=0, le=1, description="largest quality drop allowed")
    rollout: list[float] = Field(default_factory=lambda: [0.05, 0.5, 1.0])
    # Before its first share a candidate routes nothing: the dispatcher asks it too and
    # logs what it would have done (``tierfleet policy shadow-report``).
    shadow_stage: bool = Field(default=True, description="start a rollout in shadow")
    shadow_log_size: int = Field(default=10_000, gt=0, description="decisions kept per candidate")
    shadow_log_ttl_s: float = Field(default=14 * 86_400.0, gt=0)
    holdout: float = Field(default=0.2, gt=0, lt=1, description="labels kept out of training")


class FleetConfig(BaseSettings):
    """The whole fleet as one validated object: tiers, hosts, models, policy and limits.

    Every process (dispatcher, workers, reaper, API) builds it from the same file,
    with environment overrides, via :func:`load_config` or :func:`get_config`; it
    owns nothing in Redis but ``key_prefix``, which every key starts with. Guarantee:
    a config that loads is consistent (every host's tier and model exists, every tier's
    model is served by one of its hosts, every paid model has a price), so the rest
    of the code never checks again. Questions about it are answered by
    :class:`~tierfleet.fleet.FleetView`.
    """

    model_config = SettingsConfigDict(
        env_prefix="TIERFLEET_", env_nested_delimiter="__", extra="forbid"
    )

    redis_url: str = "redis://127.0.0.1:6379/0"
    result_url: str | None = None
    key_prefix: str = "tierfleet"
    tiers: dict[str, TierConfig] = Field(default_factory=dict)
    hosts: dict[str, HostConfig] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    reliability: ReliabilityConfig = Field(default_factory=ReliabilityConfig)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    budgets: dict[str, BudgetConfig] = Field(default_factory=dict)
    flow: dict[str, FlowConfig] = Field(default_factory=dict)
    rules: RulesConfig = Field(default_factory=RulesConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    learning: LearningConfig = Field(default_factory=LearningConfig)
    source: str = Field(default="<built-in>", description="where this config was read from")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment beats the file: one shared file, per-machine overrides.
        return env_settings, init_settings

    @model_validator(mode="after")
    def _consistent(self) -> FleetConfig:
        problems: list[str] = []
        for name, host in self.hosts.items():
            if host.tier not in self.tiers:
                problems.append(f"hosts.{name}.tier: unknown tier {host.tier!r}")
            for m in host.models:
                if m not in self.models:
                    problems.append(f"hosts.{name}.models: {m!r} is not in [models]")
        for name, tier in self.tiers.items():
            for t in tier.fallback:
                if t not in self.tiers:
                    problems.append(f"tiers.{name}.fallback: unknown tier {t!r}")
            for kind, m in tier.models.items():
                if m not in self.models:
                    problems.append(f"tiers.{name}.models.{kind}: {m!r} is not in [models]")
                elif not any(m in h.models for h in self.hosts.values() if h.tier == name):
                    problems.append(f"tiers.{name}.models.{kind}: no host of tier {name} serves {m!r}")
            if tier.place == "paid":
                for m in set(tier.models.values()) | {
                    m for h in self.hosts.values() if h.tier == name for m in h.models
                }:
                    mc = self.models.get(m)
                    if mc is None or mc.input_per_mtok is None or mc.output_per_mtok is None:
                        problems.append(
                            f"models.{m}: paid tier {name} uses it but it has no "
                            "input_per_mtok/output_per_mtok price"
                        )
        for fname, flow in self.flow.items():
            for h in flow.hosts:
                if h not in self.hosts:
                    problems.append(f"flow.{fname}.hosts: unknown host {h!r}")
        for kind, t in self.policy.kind_tiers.items():
            if t not in self.tiers:
                problems.append(f"policy.kind_tiers.{kind}: unknown tier {t!r}")
        if self.tiers and self.learning.shadow.strong_tier not in self.tiers and (
                self.learning.shadow.rate or self.learning.shadow.rates):
            problems.append(f"learning.shadow.strong_tier: unknown tier {self.learning.shadow.strong_tier!r}")
        if self.ledger.baseline_model and self.ledger.baseline_model not in self.models:
            problems.append(f"ledger.baseline_model: {self.ledger.baseline_model!r} not in [models]")
        if problems:
            raise ValueError("; ".join(sorted(set(problems))))
        return self

    @model_validator(mode="after")
    def _sentinel_needs_a_master(self) -> FleetConfig:
        for field, url in (("redis_url", self.redis_url), ("result_url", self.result_url or "")):
            if url.lower().startswith("sentinel://") and not self.redis.sentinel_master:
                raise ValueError(f"{field}: a sentinel:// URL needs redis.sentinel_master "
                                 "(the name the sentinels monitor, e.g. \"mymaster\")")
        return self

    @property
    def results_url(self) -> str:
        return self.result_url or self.redis_url

    def hosts_for(self, tier: str) -> dict[str, HostConfig]:
        return {n: h for n, h in self.hosts.items() if h.tier == tier}

    def tier_allowed(self, tier: str, privacy: str) -> bool:
        """Privacy rule: confidential jobs stay on our own hardware, on every attempt."""
        t = self.tiers.get(tier)
        if t is None:
            return False
        return privacy != "confidential" or t.place in ("local", "rules")

    def local_tiers(self) -> list[str]:
        return [n for n, t in self.tiers.items() if t.place in ("local", "rules")]

    def baseline_model(self) -> str | None:
        """The reference model savings are measured against.

        ``ledger.baseline_model`` when set; else the model the paid tier itself uses (its
        ``default``), so "saved" compares with what sending everything to paid would
        really have cost here, not with the priciest model one could name. A paid tier
        without a priced default falls back to its priciest priced model.
        """
        if self.ledger.baseline_model:
            return self.ledger.baseline_model
        for tier in self.tiers.values():
            if tier.place != "paid":
                continue
            default = tier.models.get("default")
            if default and default in self.models and self.models[default].input_per_mtok is not None:
                return default
        paid = {
            m
            for n, t in self.tiers.items()
            if t.place == "paid"
            for h in self.hosts_for(n).values()
            for m in h.models
        }
        priced = [(self._blended(m), m) for m in paid if self.models[m].input_per_mtok is not None]
        return max(priced)[1] if priced else None

    def unpriced_compute(self) -> list[str]:
        """Local or rented tiers whose hosts carry no compute price: their jobs cost $0 in
        every bill, which flatters the savings. Reports and the inventory say so."""
        out = []
        for name, tier in self.tiers.items():
            if tier.place not in ("local", "rented"):
                continue
            hosts = self.hosts_for(name).values()
            if hosts and all(not h.cost_per_hour and h.cost_per_second is None for h in hosts):
                out.append(name)
        return out

    def _blended(self, model: str) -> float:
        mc = self.models[model]
        return (mc.input_per_mtok or 0.0) + (mc.output_per_mtok or 0.0)

    def context_window(self, host: str, model: str | None) -> int:
        h = self.hosts[host]
        if model and model in self.models and self.models[model].context_window:
            return min(h.context_window, self.models[model].context_window or h.context_window)
        return h.context_window


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:  # TOML is UTF-8; tomllib decodes before it parses
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text (byte {exc.start + 1})") from exc
    except OSError as exc:  # a directory, no permission: a one-line error, not a traceback
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc


def config_path(path: str | os.PathLike[str] | None = None) -> Path:
    if path:
        return Path(path)
    env = os.environ.get("TIERFLEET_CONFIG")
    if env:
        return Path(env)
    local = Path("fleet.toml")
    return local if local.exists() else _BUILTIN


def load_config(path: str | os.PathLike[str] | None = None) -> FleetConfig:
    """Read, merge with the environment and validate; every problem is named in the error."""
    p = config_path(path)
    data = _read_toml(p)
    data["source"] = str(p)
    try:
        return FleetConfig(**data)
    except ValidationError as exc:
        raise ConfigError(f"{p}: invalid fleet config: {_one_line(exc)}") from exc
    except ValueError as exc:
        raise ConfigError(f"{p}: invalid fleet config: {exc}") from exc


def _one_line(exc: ValidationError) -> str:
    """Every problem as ``field: why``, on one line: pydantic's own text spans lines (and
    ends with a URL), and a CLI error must be one line that names the field."""
    parts = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{field}: {msg}" if field else msg)
    return "; ".join(parts)


@lru_cache(maxsize=1)
def get_config() -> FleetConfig:
    """The process-wide config (workers and dispatchers read it once)."""
    return load_config()


def require_chosen_redis(config: FleetConfig) -> None:
    """Refuse the built-in Redis URL when nobody chose it.

    With no config at all (no ``--config``, ``$TIERFLEET_CONFIG`` or ``./fleet.toml``) the
    built-in ``redis://127.0.0.1:6379/0`` is only a guess, and on a machine that already
    runs Redis for something else a first ``submit`` would write into that database.
    So tierfleet uses no Redis it was not told to use: set ``redis_url`` in a fleet
    config or ``TIERFLEET_REDIS_URL``. ``tierfleet demo`` and the lab start their own.
    """
    if config.source == str(_BUILTIN) and not os.environ.get("TIERFLEET_REDIS_URL"):
        raise ConfigError(
            "no fleet config (no --config, $TIERFLEET_CONFIG or ./fleet.toml) and no "
            "TIERFLEET_REDIS_URL: tierfleet will not use a Redis it was not told to use "
            f"(the built-in {config.redis_url} may be another program's). Set redis_url "
            "in a fleet config or TIERFLEET_REDIS_URL=redis://HOST:PORT/DB (a dedicated "
            "database); `tierfleet demo` starts a private Redis of its own"
        )


def reset_config() -> None:
    get_config.cache_clear()
