"""The routing policy, stage by stage, on a fleet config written here.

Uses the trained models shipped in the package; reads nothing from ../shared.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from typing import Any

import pytest

from tierfleet import tokens
from tierfleet.config import FleetConfig
from tierfleet.errors import NoRoute
from tierfleet.jobs import Job, Kind, Privacy, Risk, UserTier
from tierfleet.policy import DEFAULT_STAGES, FleetState, Policy, Stage, build_policy

FLEET = """
[tiers.rules]
place = "rules"

[tiers.local-mac]
place = "local"
models = { default = "small:4b" }

[tiers.local-gpu]
place = "local"
models = { default = "coder:30b", reasoning = "think:8b", vision = "eyes:2b" }
fallback = ["local-mac", "runpod", "paid"]

[tiers.runpod]
place = "rented"
models = { default = "coder:30b" }
fallback = ["paid"]

[tiers.paid]
place = "paid"
models = { default = "big-paid" }
fallback = []

[hosts.mac]
kind = "ollama"
url = "http://127.0.0.1:1"
tier = "local-mac"
models = ["small:4b"]
context_window = 4096

[hosts.gpu-a]
kind = "ollama"
url = "http://127.0.0.1:2"
tier = "local-gpu"
models = ["coder:30b", "think:8b", "eyes:2b"]
context_window = 16384

[hosts.gpu-b]
kind = "ollama"
url = "http://127.0.0.1:3"
tier = "local-gpu"
models = ["coder:30b", "think:8b", "eyes:2b"]
context_window = 16384

[hosts.pod]
kind = "runpod"
url = "http://127.0.0.1:4"
tier = "runpod"
models = ["coder:30b"]
context_window = 131072
cost_per_second = 0.0005

[hosts.api]
kind = "openai"
url = "http://127.0.0.1:5"
tier = "paid"
models = ["big-paid"]
context_window = 400000

[models."small:4b"]
input_per_mtok = 0.0
output_per_mtok = 0.0

[models."coder:30b"]
input_per_mtok = 0.0
output_per_mtok = 0.0

[models."think:8b"]
input_per_mtok = 0.0
output_per_mtok = 0.0

[models."eyes:2b"]
vision = true

[models.big-paid]
input_per_mtok = 3.0
output_per_mtok = 12.0

[policy]
large_job_tokens = 50000
"""

LOCAL = {"rules", "local-mac", "local-gpu"}


def fleet(**policy: Any) -> FleetConfig:
    data = tomllib.loads(FLEET)
    data["policy"].update(policy)
    return FleetConfig(**data)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy(fleet())


def long_text(n_tokens: int) -> str:
    """A prompt of about ``n_tokens`` tokens (checked by the caller through tokens_in)."""
    unit = "The quarterly numbers show steady growth in every region we serve. "
    per = tokens.count(unit)
    return "Summarize this report:\n" + unit * (n_tokens // per + 1)


def reasons(route: Any) -> str:
    return "\n".join(route.explain())


# -- constraints: privacy and overrides ------------------------------------------------------


CONFIDENTIAL_CASES = [
    dict(prompt="Write a short poem about autumn leaves."),  # writing -> paid by default
    dict(prompt="Refactor this Python class to use dataclasses.", risk=Risk.HIGH),
    dict(prompt="Solve 3x + 5 = 20 and explain each step.", user_tier=UserTier.PREMIUM),
    dict(prompt="What is the capital of Peru?", latency_budget_s=1.0),
    dict(prompt=long_text(9000)),  # over local-mac's window: local-gpu only
    dict(prompt="Review this contract clause.", max_cost_usd=0.0),
]


@pytest.mark.parametrize("fields", CONFIDENTIAL_CASES)
def test_confidential_never_leaves_local_tiers_nor_falls_back_there(
    policy: Policy, fields: dict[str, Any]
) -> None:
    busy = FleetState(
        queue_depth={"local-mac": 500, "local-gpu": 500},
        live_workers={"local-mac": 1, "local-gpu": 1},
        service_time_s={"local-mac": 10.0, "local-gpu": 10.0},
    )
    job = Job(privacy=Privacy.CONFIDENTIAL, **fields)
    for state in (None, busy):
        route = policy.route(job, state)
        assert route.tier in LOCAL, reasons(route)
        assert set(route.fallbacks) <= LOCAL, route.fallbacks


def test_confidential_chain_is_filtered_and_says_so(policy: Policy) -> None:
    route = policy.route(
        Job(prompt="Fix the bug in this function: def f(x): return x +", privacy=Privacy.CONFIDENTIAL)
    )
    assert route.tier == "local-gpu"
    assert route.fallbacks == ["local-mac"]
    assert "privacy=confidential" in reasons(route)
    public = policy.route(Job(prompt="Fix the bug in this function: def f(x): return x +"))
    assert public.fallbacks == ["local-mac", "runpod", "paid"]


def test_forbidden_overrides_are_errors_that_name_the_field(policy: Policy) -> None:
    with pytest.raises(NoRoute, match=r"^tier: .*privacy=confidential"):
        policy.route(Job(prompt="hello", tier="paid", privacy=Privacy.CONFIDENTIAL))
    with pytest.raises(NoRoute, match=r"^model: .*big-paid.*privacy=confidential"):
        policy.route(Job(prompt="hello", model="big-paid", privacy=Privacy.CONFIDENTIAL))
    with pytest.raises(NoRoute, match=r"^tier: 'nowhere' is not a configured tier"):
        policy.route(Job(prompt="hello", tier="nowhere"))
    with pytest.raises(NoRoute, match=r"^model: no configured host serves"):
        policy.route(Job(prompt="hello", model="unknown-model"))


def test_explicit_tier_wins_over_kind_difficulty_and_load(policy: Policy) -> None:
    jammed = FleetState(queue_depth={"runpod": 1000}, service_time_s={"runpod": 30.0})
    job = Job(prompt="What is 2 + 2?", tier="runpod", latency_budget_s=1.0)
    route = policy.route(job, jammed)
    assert route.tier == "runpod"
    assert route.model == "coder:30b"
    assert "explicit tier runpod" in reasons(route)
    assert "load" not in [r.stage for r in route.reasons]


def test_explicit_model_picks_a_tier_that_serves_it(policy: Policy) -> None:
    route = policy.route(Job(prompt="Tell me a joke.", model="coder:30b"))
    assert route.model == "coder:30b"
    assert route.tier in {"local-gpu", "runpod"}
    only = policy.route(Job(prompt="Tell me a joke.", model="big-paid"))
    assert (only.tier, only.model, only.host) == ("paid", "big-paid", "api")
    assert "context window" not in reasons(only)  # other tiers run their own models


def test_premium_user_goes_to_the_premium_tier_unless_privacy_forbids(policy: Policy) -> None:
    route = policy.route(Job(prompt="What is the capital of Peru?", user_tier=UserTier.PREMIUM))
    assert route.tier == "paid"
    assert "user_tier=premium" in reasons(route)
    local = policy.route(
        Job(prompt="What is the capital of Peru?", user_tier=UserTier.PREMIUM, privacy=Privacy.CONFIDENTIAL)
    )
    assert local.tier in LOCAL
    assert "user_tier=premium would use paid" in reasons(local)


# -- rules and risk -----------------------------------------------------------------------


def test_rules_kinds_go_to_rules_with_no_model(policy: Policy) -> None:
    for kind in (Kind.DEDUPE, Kind.JSON_VALIDATE, Kind.REGEX_EXTRACT, Kind.LOG_SLICE, Kind.KEYWORD_ROUTE):
        route = policy.route(Job(kind=kind, input={"items": ["a", "a"]}, risk=Risk.HIGH))
        assert (route.tier, route.model, route.host, route.fallbacks) == ("rules", None, None, [])
        assert route.kind is kind
        assert "rules kind" in reasons(route)
    with pytest.raises(NoRoute, match="rules tier"):
        policy.route(Job(kind=Kind.DEDUPE, input={"items": []}, tier="paid"))


def test_high_risk_goes_to_paid(policy: Policy) -> None:
    route = policy.route(Job(prompt="Summarize this email: lunch moved to noon.", risk=Risk.HIGH))
    assert route.tier == "paid"
    assert not route.review
    assert "risk=high -> paid" in reasons(route)


def test_high_risk_confidential_stays_on_the_best_local_tier_for_review(policy: Policy) -> None:
    route = policy.route(
        Job(prompt="Summarize this email: lunch moved to noon.", risk=Risk.HIGH, privacy=Privacy.CONFIDENTIAL)
    )
    assert route.tier == "local-gpu"
    assert route.review
    assert "marked for review" in reasons(route)


# -- kind and difficulty -----------------------------------------------------------------------


def test_kinds_map_to_their_tiers(policy: Policy) -> None:
    cases = {
        Kind.CODE: "local-gpu",
        Kind.REASONING: "local-gpu",
        Kind.WRITING: "paid",
    }
    for kind, tier in cases.items():
        route = policy.route(Job(prompt="Do the thing we discussed, carefully and completely.", kind=kind))
        assert route.tier == tier, (kind, reasons(route))
        assert route.kind is kind
    reasoning = policy.route(Job(prompt="Prove that 17 is prime.", kind=Kind.REASONING))
    assert reasoning.model == "think:8b"


def test_auto_jobs_are_classified_and_images_mean_vision(policy: Policy) -> None:
    code = policy.route(Job(prompt="Write a Python function that merges two sorted lists."))
    assert code.kind is Kind.CODE
    assert "auto -> code" in reasons(code)
    pic = policy.route(Job(prompt="What is in this picture?", images=["aGVsbG8="]))
    assert pic.kind is Kind.VISION
    assert (pic.tier, pic.model) == ("local-gpu", "eyes:2b")
    assert "carries images" in reasons(pic)


def test_p_small_ok_threshold_escalates_small_kinds(policy: Policy) -> None:
    job = Job(prompt="Classify this review as positive or negative: great food, slow service.")
    assert policy.route(job).tier == "local-mac"
    strict = Policy(fleet(p_small_ok_threshold=1.0))
    route = strict.route(job)
    assert route.tier == "local-gpu"
    assert "p_small_ok" in reasons(route) and "< 1.00" in reasons(route)


def test_p_small_ok_keeps_easy_code_on_the_small_model() -> None:
    lenient = Policy(fleet(p_small_ok_threshold=0.0))
    route = lenient.route(Job(prompt="Write a Python function that adds two numbers."))
    assert route.kind is Kind.CODE
    assert route.tier == "local-mac"
    assert "the small model on local-mac will do" in reasons(route)


def test_long_chat_leaves_the_small_model(policy: Policy) -> None:
    text = "Tell me what you think about this. " * 60
    route = policy.route(Job(prompt=text, kind=Kind.CHAT))
    assert route.tokens_in > 400
    assert route.tier == "local-gpu"
    assert "long chat" in reasons(route)


# -- size -------------------------------------------------------------------------------------


def test_a_prompt_over_a_hosts_context_window_never_goes_there(policy: Policy) -> None:
    text = long_text(6000)
    route = policy.route(Job(prompt=text, kind=Kind.SUMMARY))
    assert route.tokens_in > 4096
    assert route.tier != "local-mac"
    assert "local-mac" not in route.fallbacks
    assert "exceed the context window of local-mac" in reasons(route)
    # Room for the answer counts too (difficulty set aside: threshold 0).
    lenient = Policy(fleet(p_small_ok_threshold=0.0))
    near = long_text(3600)
    fits = lenient.route(Job(prompt=near, kind=Kind.SUMMARY, max_tokens=256))
    assert fits.tokens_in + 256 <= 4096 and fits.tier == "local-mac"
    over = lenient.route(Job(prompt=near, kind=Kind.SUMMARY, max_tokens=1024))
    assert over.tier != "local-mac"


def test_an_explicit_tier_too_small_for_the_prompt_is_an_error(policy: Policy) -> None:
    with pytest.raises(NoRoute, match="do not fit"):
        policy.route(Job(prompt=long_text(6000), tier="local-mac"))


def test_very_large_jobs_go_to_runpod_when_privacy_allows(policy: Policy) -> None:
    text = long_text(60000)
    route = policy.route(Job(prompt=text, kind=Kind.SUMMARY))
    assert route.tier == "runpod"
    assert route.host == "pod"
    assert "large job" in reasons(route)
    with pytest.raises(NoRoute, match="fit no allowed tier"):
        policy.route(Job(prompt=text, kind=Kind.SUMMARY, privacy=Privacy.CONFIDENTIAL))


# -- load -------------------------------------------------------------------------------------


def load(gpu: int, pod: int, paid: int = 0) -> FleetState:
    return FleetState(
        queue_depth={"local-gpu": gpu, "runpod": pod, "paid": paid},
        live_workers={"local-gpu": 2, "runpod": 1, "paid": 4},
        service_time_s={"local-gpu": 4.0, "runpod": 2.0, "paid": 1.0},
    )


CODE_JOB = "Implement a thread-safe LRU cache class in Java with unit tests."


def test_spillover_fires_and_stops_at_the_first_tier_within_budget(policy: Policy) -> None:
    job = Job(prompt=CODE_JOB, latency_budget_s=10.0)
    assert policy.route(job, load(gpu=5, pod=0)).tier == "local-gpu"  # 10 s: within budget
    one = policy.route(job, load(gpu=6, pod=0))  # 12 s on the GPU
    assert one.tier == "runpod"
    assert "local-gpu wait 12.0 s > budget 10 s -> runpod" in reasons(one)
    two = policy.route(job, load(gpu=6, pod=6))  # runpod 12 s too
    assert two.tier == "paid"
    assert "runpod wait 12.0 s" in reasons(two)
    none = policy.route(job, load(gpu=8, pod=6, paid=100))  # all over: the shortest wait (12 s)
    assert none.tier == "runpod"
    assert "none within budget" in reasons(none)


def test_no_spill_without_a_budget_or_when_privacy_forbids(policy: Policy) -> None:
    assert policy.route(Job(prompt=CODE_JOB), load(gpu=100, pod=0)).tier == "local-gpu"
    route = policy.route(
        Job(prompt=CODE_JOB, latency_budget_s=1.0, privacy=Privacy.CONFIDENTIAL), load(gpu=100, pod=0)
    )
    assert route.tier == "local-gpu"
    assert "no allowed tier to spill to" in reasons(route)


def test_open_breakers_steer_host_and_tier(policy: Policy) -> None:
    half = FleetState(open_hosts=frozenset({"gpu-a"}))
    assert policy.route(Job(prompt=CODE_JOB), half).host == "gpu-b"
    down = FleetState(open_hosts=frozenset({"gpu-a", "gpu-b"}))
    route = policy.route(Job(prompt=CODE_JOB), down)
    assert route.tier == "local-mac"
    assert "open breaker" in reasons(route)


# -- cost ------------------------------------------------------------------------------------


def test_cost_ceiling_keeps_a_job_off_a_tier_it_is_not_worth(policy: Policy) -> None:
    job = Job(prompt="Write a wedding toast for my brother Sam.", max_cost_usd=0.001)
    route = policy.route(job)
    assert route.kind is Kind.WRITING
    assert route.tier == "local-gpu"
    assert "max_cost_usd 0.001: paid" in reasons(route)
    rich = policy.route(Job(prompt="Write a wedding toast for my brother Sam.", max_cost_usd=1.0))
    assert rich.tier == "paid"


def test_cost_ceiling_prunes_dear_fallbacks_and_flags_high_risk(policy: Policy) -> None:
    route = policy.route(Job(prompt=CODE_JOB, max_cost_usd=0.0))
    assert route.tier == "local-gpu"
    assert route.fallbacks == ["local-mac"]
    risky = policy.route(Job(prompt=CODE_JOB, risk=Risk.HIGH, max_cost_usd=0.0))
    assert risky.tier in LOCAL and risky.review
    with pytest.raises(NoRoute, match=r"^max_cost_usd: the job pins paid"):
        policy.route(Job(prompt=CODE_JOB, tier="paid", max_cost_usd=0.0))


# -- session context ---------------------------------------------------------------------------


def test_a_bare_follow_up_keeps_the_sessions_kind(policy: Policy) -> None:
    coding = FleetState(session_tiers={"s1": ["chat", "code", "code", "code"]})
    follow = Job(prompt="ok, and now make it faster please", session="s1")
    route = policy.route(follow, coding)
    assert route.kind is Kind.CODE and route.tier == "local-gpu"
    assert "session s1" in reasons(route) and "keep code" in reasons(route)
    # No history, or a mixed one: the text decides.
    assert policy.route(follow).kind is not Kind.CODE
    mixed = FleetState(session_tiers={"s1": ["code", "summary", "translation"]})
    assert policy.route(follow, mixed).kind is not Kind.CODE
    # A clear signal of its own wins over the session.
    clear = Job(prompt="Translate 'good night' into Italian.", session="s1")
    assert policy.route(clear, coding).kind is Kind.TRANSLATION


def test_session_memory_zero_turns_stickiness_off() -> None:
    p = Policy(fleet(session_memory=0))
    state = FleetState(session_tiers={"s1": ["code", "code", "code"]})
    assert p.route(Job(prompt="ok, and now make it faster please", session="s1"), state).kind is not Kind.CODE


def test_a_session_history_of_tiers_keeps_the_tier(policy: Policy) -> None:
    state = FleetState(session_tiers={"s9": ["runpod", "runpod", "runpod"]})
    route = policy.route(Job(prompt="and the next one?", session="s9"), state)
    assert route.tier == "runpod"
    assert "ran on runpod" in reasons(route)


# -- the whole -----------------------------------------------------------------------------------


def test_route_fields_are_complete(policy: Policy) -> None:
    job = Job(prompt="Summarize: the build is green again after the flaky test was fixed.")
    route = policy.route(job)
    assert route.tokens_in == tokens.count(job.text())
    assert route.p_small_ok is not None and 0.0 <= route.p_small_ok <= 1.0
    assert route.model == "small:4b" and route.host == "mac"
    assert all(r.stage and r.text for r in route.reasons)


def test_route_many_matches_route_one_by_one(policy: Policy) -> None:
    prompts = [
        "Translate 'thank you' into Japanese.",
        "Extract every date from: kickoff 3 May, review 9 June.",
        "Why is the sea salty?",
        "Write a Rust function that reverses a string.",
        "If a train goes 120 km in 1.5 hours, what is its average speed?",
        "Draft a polite reminder about the unpaid invoice.",
        long_text(5000),
    ]
    jobs = [Job(prompt=p) for p in prompts] + [Job(kind=Kind.DEDUPE, input={"items": [1, 1]})]
    many = policy.route_many(jobs)
    for job, batch in zip(jobs, many, strict=True):
        one = policy.route(job)
        assert (one.tier, one.kind, one.model, one.fallbacks) == (
            batch.tier, batch.kind, batch.model, batch.fallbacks
        )
        assert one.p_small_ok == pytest.approx(batch.p_small_ok, abs=1e-6)


def test_route_each_returns_errors_in_place(policy: Policy) -> None:
    jobs = [Job(prompt="hi"), Job(prompt="hi", tier="paid", privacy=Privacy.CONFIDENTIAL), Job(prompt="yo")]
    out = policy.route_each(jobs)
    assert isinstance(out[1], NoRoute)
    assert out[0].tier == out[2].tier == "local-mac"  # type: ignore[union-attr]
    with pytest.raises(NoRoute):
        policy.route_many(jobs)


def test_stages_compose(policy: Policy) -> None:
    class AlwaysPaid:
        name = "house-rule"

        def apply(self, d: Any) -> None:
            if "paid" in d.allowed:
                d.decide(self.name, "paid", "everything to paid today")
                d.settled = True

    stage: Stage = AlwaysPaid()
    custom = Policy(fleet(), stages=[*DEFAULT_STAGES[:3], stage, *DEFAULT_STAGES[3:]])
    assert custom.route(Job(prompt="hi there")).tier == "paid"
    assert custom.route(Job(prompt="hi", privacy=Privacy.CONFIDENTIAL)).tier == "local-mac"
    assert build_policy(fleet()).route(Job(prompt="hi there")).tier == "local-mac"


def test_the_policy_imports_neither_celery_nor_redis() -> None:
    code = (
        "import sys, tierfleet.policy\n"
        "print(','.join(m for m in ('celery', 'redis', 'kombu') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_producer_typed_mechanical_work_stays_small_even_when_p_small_ok_is_low() -> None:
    from pathlib import Path

    from tierfleet.config import load_config
    from tierfleet.jobs import Job
    from tierfleet.policy import build_policy

    cfg = load_config(Path(__file__).parents[3] / "src/tierfleet/defaults.toml")
    strict = cfg.model_copy(update={"policy": cfg.policy.model_copy(
        update={"p_small_ok_threshold": 0.99})})
    policy = build_policy(strict)
    prompt = "Label this ticket as network, email or hardware: my VPN drops every hour."
    typed = policy.route(Job(prompt=prompt, kind="classification"))
    untyped = policy.route(Job(prompt=prompt))
    assert typed.p_small_ok is not None and typed.p_small_ok < 0.99
    assert typed.tier == "local-mac"
    assert any("producer typed" in r.text for r in typed.reasons)
    assert untyped.kind.value == "classification" and untyped.tier != "local-mac"


def test_untrained_kind_uses_the_length_prior_not_an_extrapolation(policy: Policy) -> None:
    """p_small_ok saw no translation prompt: a short one is not sent up on its estimate,
    a long one still is (the length prior), and a trained kind keeps the learned value."""
    from tierfleet.policy.models import prior_small_ok

    short = policy.route(Job(prompt="Please translate 'the invoice is attached' to Spanish."))
    assert short.kind is Kind.TRANSLATION and short.tier == "local-mac"
    assert short.p_small_ok == pytest.approx(prior_small_ok(short.tokens_in), abs=1e-4)
    assert "length prior: no translation labels" in reasons(short)
    strict = Policy(fleet(p_small_ok_threshold=0.99))
    assert strict.route(Job(prompt="Please translate 'the invoice is attached' to Spanish.")).tier \
        == "local-gpu"
    chat = policy.route(Job(prompt="What is the capital of France?", kind=Kind.CHAT))
    assert "length prior" not in reasons(chat)


def test_small_ok_kinds_names_what_the_model_was_trained_on() -> None:
    from tierfleet.policy.training import OkRow, small_ok_kinds

    rows = [OkRow("q", 1.0, "dcrouter", "gsm8k", {}), OkRow("q", 0.0, "dcrouter", "mmlu", {})]
    assert small_ok_kinds(rows) == ["chat", "reasoning"]
    assert small_ok_kinds([*rows, OkRow("q", 1.0, "labels", "summary", {})]) == \
        ["chat", "reasoning", "summary"]
    # A user's label with no kind could be any kind: none is ruled out.
    assert small_ok_kinds([*rows, OkRow("q", 1.0, "labels", "", {})]) is None
