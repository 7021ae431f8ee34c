"""The simulated host each backend test module talks to, over loopback.

A module names its host (``HOST = "sim-openai"``) and may give its timeout
(``TIMEOUT_S``); ``sim`` serves that fleet for the module and ``backend`` is a
fresh client per test, with the sim's counters and faults reset.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.sim_fixtures import sim_config, sim_hosts
from tierfleet.backends import make_backend
from tierfleet.lab.sim import SimFleet


@pytest.fixture(scope="module")
def sim(request: pytest.FixtureRequest) -> Iterator[SimFleet]:
    host = request.module.HOST
    # Generous: a loaded CI box must not turn a slow answer into a "read timeout".
    timeout_s = getattr(request.module, "TIMEOUT_S", 4.0)
    cfg = sim_config(**{host: {"timeout_s": timeout_s, "connect_timeout_s": 0.5}})
    with sim_hosts(cfg) as fleet:
        yield fleet


@pytest.fixture
def backend(request: pytest.FixtureRequest, sim: SimFleet) -> Iterator[Any]:
    host = request.module.HOST
    sim.reset()
    b = make_backend(host, sim.config.hosts[host], health_timeout_s=0.5)
    yield b
    b.close()
