"""Simulated hosts for any test: a ready config and a context manager (and pytest fixtures).

    from tests.support.sim_fixtures import sim_config, sim_hosts

    with sim_hosts() as sim:                    # every simulated host, free ports, scale 0.01
        cfg = sim.config                        # hosts' URLs on their real ports
        sim.fault("sim-ollama", "error", count=1)
        sim.down("sim-ollama")

Or as fixtures: ``from tests.support.sim_fixtures import sim_fleet  # noqa: F401`` in a test module,
then take ``sim_fleet`` as an argument. Keys: the Runpod and OpenAI sims want a Bearer;
``sim_keys`` (or the ``sim_fleet`` fixture) puts ``SIM_KEYS`` in the environment.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tierfleet.config import FleetConfig
from tierfleet.lab.sim import SimFleet

RUNPOD_KEY_ENV = "TIERFLEET_TEST_RUNPOD_KEY"
OPENAI_KEY_ENV = "TIERFLEET_TEST_OPENAI_KEY"
SIM_KEYS = {RUNPOD_KEY_ENV: "test-runpod-key", OPENAI_KEY_ENV: "test-openai-key"}
SCALE = 0.01  # the seed's latencies x 0.01: a 30B answer in ~0.1 s


def sim_config_data() -> dict[str, Any]:
    """A fleet like the seed's: a Mac mini, a GPU box, Runpod and a paid provider, all simulated.

    Port 0 in a URL means "any free port"; ``SimFleet.config`` gives the real ones.
    """
    return {
        "tiers": {
            "rules": {"place": "rules"},
            "local-mac": {"place": "local", "models": {"default": "qwen3:4b"}},
            "local-gpu": {
                "place": "local",
                "models": {
                    "default": "qwen3-coder:30b",
                    "reasoning": "deepseek-r1:8b",
                    "vision": "granite3.2-vision:2b",
                },
                "fallback": ["local-mac", "runpod", "paid"],
            },
            "runpod": {
                "place": "rented",
                "models": {"default": "qwen3-coder:30b"},
                "fallback": ["paid"],
            },
            "paid": {"place": "paid", "models": {"default": "gpt-5.5"}},
        },
        "hosts": {
            "sim-ollama": {
                "kind": "ollama",
                "url": "http://127.0.0.1:0",
                "tier": "local-mac",
                "models": ["qwen3:4b"],
                "context_window": 32768,
                "timeout_s": 10,
                "connect_timeout_s": 1,
                "simulated": True,
            },
            "sim-gpu": {
                "kind": "ollama",
                "url": "http://127.0.0.1:0",
                "tier": "local-gpu",
                "models": ["qwen3-coder:30b", "deepseek-r1:8b", "granite3.2-vision:2b"],
                "context_window": 32768,
                "timeout_s": 10,
                "connect_timeout_s": 1,
                "simulated": True,
            },
            "sim-runpod": {
                "kind": "runpod",
                "url": "http://127.0.0.1:0/v2/sim-endpoint",
                "tier": "runpod",
                "models": ["qwen3-coder:30b"],
                "api_key_env": RUNPOD_KEY_ENV,
                "context_window": 131072,
                "cost_per_second": 0.00044,
                "timeout_s": 10,
                "connect_timeout_s": 1,
                "simulated": True,
            },
            "sim-openai": {
                "kind": "openai",
                "url": "http://127.0.0.1:0/v1",
                "tier": "paid",
                "models": ["gpt-5.5"],
                "api_key_env": OPENAI_KEY_ENV,
                "context_window": 400000,
                "timeout_s": 10,
                "connect_timeout_s": 1,
                "simulated": True,
            },
        },
        "models": {
            "qwen3:4b": {"input_per_mtok": 0.0, "output_per_mtok": 0.0, "context_window": 32768},
            "qwen3-coder:30b": {"input_per_mtok": 0.0, "output_per_mtok": 0.0},
            "deepseek-r1:8b": {"input_per_mtok": 0.0, "output_per_mtok": 0.0},
            "granite3.2-vision:2b": {"vision": True, "context_window": 16384},
            "gpt-5.5": {"input_per_mtok": 3.0, "output_per_mtok": 12.0, "context_window": 400000},
        },
    }


def sim_config(**host_overrides: dict[str, Any]) -> FleetConfig:
    """The config above; ``sim_config(**{"sim-ollama": {"timeout_s": 0.5}})`` tweaks a host."""
    data = sim_config_data()
    for name, changes in host_overrides.items():
        data["hosts"][name].update(changes)
    return FleetConfig(**data)


@contextmanager
def sim_keys() -> Iterator[dict[str, str]]:
    saved = {k: os.environ.get(k) for k in SIM_KEYS}
    os.environ.update(SIM_KEYS)
    try:
        yield dict(SIM_KEYS)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def sim_hosts(
    config: FleetConfig | None = None, *, scale: float = SCALE, admin: bool = True
) -> Iterator[SimFleet]:
    """Start every simulated host of ``config`` (default: :func:`sim_config`) on free ports."""
    fleet = SimFleet.from_config(
        config or sim_config(), scale=scale, free_ports=True, admin_port=0 if admin else None
    )
    with sim_keys(), fleet:
        yield fleet


@pytest.fixture
def sim_fleet() -> Iterator[SimFleet]:
    with sim_hosts() as fleet:
        yield fleet
