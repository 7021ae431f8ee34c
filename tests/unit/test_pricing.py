"""Cost arithmetic on hand-computed cases, and seed 003's savings example recomputed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tierfleet.config import FleetConfig, load_config
from tierfleet.errors import ConfigError
from tierfleet.pricing import (
    attempt_cost,
    baseline_cost,
    from_nanos,
    to_nanos,
    token_cost,
)

# Seed 003's prices (USD per million tokens, input / output), as in
# ../shared/data/prices_example.toml.
OPUS = ("claude-opus-4-7", 5.00, 25.00)
SONNET = ("claude-sonnet-4-6", 3.00, 15.00)
GPT = ("gpt-5.5", 3.00, 12.00)
DEEPSEEK = ("deepseek-chat", 0.27, 1.10)


def fleet(**extra: Any) -> FleetConfig:
    """Rules, an amortised local box, a per-second and a per-hour rented GPU, a paid provider."""
    data: dict[str, Any] = {
        "tiers": {
            "rules": {"place": "rules"},
            "local-mac": {"place": "local", "models": {"default": "qwen3:4b"}},
            "runpod": {"place": "rented", "models": {"default": "qwen3-coder:30b"}},
            "pod": {"place": "rented", "models": {"default": "qwen3-coder:30b"}},
            "paid": {"place": "paid", "models": {"default": GPT[0]}},
        },
        "hosts": {
            "mac": {
                "kind": "ollama",
                "url": "http://127.0.0.1:1",
                "tier": "local-mac",
                "models": ["qwen3:4b"],
                "cost_per_hour": 0.36,
            },
            "rp": {
                "kind": "runpod",
                "url": "http://127.0.0.1:2",
                "tier": "runpod",
                "models": ["qwen3-coder:30b"],
                "cost_per_second": 0.00044,
            },
            "pod1": {
                "kind": "openai",
                "url": "http://127.0.0.1:3",
                "tier": "pod",
                "models": ["qwen3-coder:30b"],
                "cost_per_hour": 1.80,
            },
            "provider": {
                "kind": "openai",
                "url": "http://127.0.0.1:4",
                "tier": "paid",
                "models": [m for m, _, _ in (OPUS, SONNET, GPT, DEEPSEEK)],
            },
        },
        "models": {
            "qwen3:4b": {},
            "qwen3-coder:30b": {},
            **{m: {"input_per_mtok": i, "output_per_mtok": o} for m, i, o in (OPUS, SONNET, GPT, DEEPSEEK)},
        },
        "policy": {"kind_tiers": {"chat": "local-mac", "code": "runpod", "writing": "paid"}},
    }
    data.update(extra)
    return FleetConfig(**data)


def test_paid_tier_bills_tokens_per_million() -> None:
    cfg = fleet()
    # 1,000 in at $3/M + 500 out at $12/M = 0.003 + 0.006
    assert attempt_cost(cfg, tier="paid", model="gpt-5.5", tokens_in=1000, tokens_out=500) == (
        pytest.approx(0.009, abs=1e-15)
    )
    # Opus: 2M in at $5 + 1M out at $25 = $35
    assert attempt_cost(
        cfg, tier="paid", model="claude-opus-4-7", tokens_in=2_000_000, tokens_out=1_000_000
    ) == pytest.approx(35.0)


def test_rented_per_second_bills_started_seconds() -> None:
    cfg = fleet()
    # 2.2 s runs bill 3 started seconds at $0.00044
    assert attempt_cost(cfg, tier="runpod", host="rp", seconds=2.2) == pytest.approx(0.00132)
    assert attempt_cost(cfg, tier="runpod", seconds=3.0) == pytest.approx(0.00132)  # host found
    assert attempt_cost(cfg, tier="runpod", seconds=0.0) == 0.0


def test_rented_per_hour_and_local_amortised_are_pro_rata() -> None:
    cfg = fleet()
    assert attempt_cost(cfg, tier="pod", host="pod1", seconds=90) == pytest.approx(1.80 * 90 / 3600)
    assert attempt_cost(cfg, tier="local-mac", host="mac", seconds=100) == pytest.approx(0.01)
    cfg_free = fleet()
    cfg_free.hosts["mac"].cost_per_hour = 0.0
    assert attempt_cost(cfg_free, tier="local-mac", host="mac", seconds=100) == 0.0


def test_rules_are_free_but_have_a_baseline() -> None:
    cfg = fleet(ledger={"baseline_model": "claude-sonnet-4-6"})
    assert attempt_cost(cfg, tier="rules", tokens_in=10_000) == 0.0
    # What the same input would cost on Sonnet: 10,000 x $3/M
    assert baseline_cost(cfg, 10_000, 0) == pytest.approx(0.03)


def test_baseline_defaults_to_the_model_the_paid_tier_uses() -> None:
    # Not the priciest model a host lists (claude-opus-4-7): what "all on paid" would
    # really cost here is the paid tier's own default, gpt-5.5.
    cfg = fleet()
    assert cfg.baseline_model() == "gpt-5.5"
    assert baseline_cost(cfg, 1_000_000, 1_000_000) == pytest.approx(15.0)
    cfg_opus = fleet(ledger={"baseline_model": "claude-opus-4-7"})
    assert baseline_cost(cfg_opus, 1_000_000, 1_000_000) == pytest.approx(30.0)


def test_missing_prices_are_errors_not_zero() -> None:
    cfg = fleet()
    with pytest.raises(ConfigError, match="name its model"):
        attempt_cost(cfg, tier="paid", tokens_in=10)
    with pytest.raises(ConfigError, match="no such model"):
        token_cost(cfg, "mystery-model", 1, 1)
    with pytest.raises(ConfigError, match="no input_per_mtok"):
        token_cost(cfg, "qwen3:4b", 1, 1)
    with pytest.raises(ConfigError, match="no such tier"):
        attempt_cost(cfg, tier="moon", tokens_in=1)
    with pytest.raises(ValueError, match="tokens_in"):
        attempt_cost(cfg, tier="paid", model="gpt-5.5", tokens_in=-1)


def test_paid_model_without_price_fails_at_config_load(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(
        """
[tiers.paid]
place = "paid"
models = { default = "mystery" }

[hosts.provider]
kind = "openai"
url = "https://api.example.invalid/v1"
tier = "paid"
models = ["mystery"]

[models.mystery]
context_window = 8192
"""
    )
    with pytest.raises(ConfigError, match=r"models\.mystery.*no input_per_mtok/output_per_mtok"):
        load_config(path)


def test_nanos_round_trip_is_exact() -> None:
    assert to_nanos(0.000027) == 27_000
    assert from_nanos(to_nanos(123.456789012)) == pytest.approx(123.456789012, abs=1e-9)
    assert sum(to_nanos(0.1) for _ in range(10)) == to_nanos(1.0)


# -- seed 003 ------------------------------------------------------------------------

SEED_MIX = ((OPUS, 0.20), (SONNET, 0.30), (GPT, 0.15), (DEEPSEEK, 0.35))
REQUESTS_PER_MONTH = 200 * 30
TOKENS_PER_REQUEST = 75_000


def seed_003_month(input_share: float) -> tuple[float, float]:
    """Monthly cost all on Sonnet, and routed by the seed's mix, for one input/output split."""
    cfg = fleet(ledger={"baseline_model": SONNET[0]})
    tin = round(TOKENS_PER_REQUEST * input_share)
    tout = TOKENS_PER_REQUEST - tin
    before = REQUESTS_PER_MONTH * baseline_cost(cfg, tin, tout)
    after = sum(
        REQUESTS_PER_MONTH
        * share
        * attempt_cost(cfg, tier="paid", model=model, tokens_in=tin, tokens_out=tout)
        for (model, _, _), share in SEED_MIX
    )
    return before, after


def test_seed_003_saves_about_a_fifth_not_70_percent() -> None:
    # The seed's $4,050 a month is 450M tokens at $9/M: an even input/output split on Sonnet.
    before, after = seed_003_month(0.5)
    assert before == pytest.approx(4050.0)
    # Routed: 450M x (0.2*15 + 0.3*9 + 0.15*7.5 + 0.35*0.685) $/M = 450 x 7.06475
    assert after == pytest.approx(3179.1375)
    saving = 1 - after / before
    assert saving == pytest.approx(0.21503, abs=1e-5)
    print(
        f"\nseed 003: ${before:,.2f}/month all on Sonnet -> ${after:,.2f} routed: "
        f"saves ${before - after:,.2f} ({saving:.1%}); the seed claims ~$1,200 (70%)"
    )
    # Whatever the split, the saving stays between the all-input and all-output cases.
    savings = {}
    for share in (0.0, 0.25, 0.5, 0.75, 1.0):
        b, a = seed_003_month(share)
        savings[share] = 1 - a / b
    print("saving by input share:", {k: f"{v:.1%}" for k, v in savings.items()})
    assert savings[1.0] == pytest.approx(1 - 2.4445 / 3.0)  # 18.5%
    assert savings[0.0] == pytest.approx(1 - 11.685 / 15.0)  # 22.1%
    assert all(0.18 < s < 0.23 for s in savings.values())
