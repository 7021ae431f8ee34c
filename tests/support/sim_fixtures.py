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

from tests.support.fleets import OPENAI_KEY_ENV, RUNPOD_KEY_ENV, home_lab_data
from tierfleet.config import FleetConfig
from tierfleet.lab.sim import SimFleet

SIM_KEYS = {RUNPOD_KEY_ENV: "test-runpod-key", OPENAI_KEY_ENV: "test-openai-key"}
SCALE = 0.01  # the profiles' latencies x 0.01: a 30B answer in ~0.1 s


def sim_config_data() -> dict[str, Any]:
    """The home-lab example fleet, all simulated (:func:`tests.support.fleets.home_lab_data`).

    Port 0 in a URL means "any free port"; ``SimFleet.config`` gives the real ones.
    """
    return home_lab_data()


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
