"""Simulated model hosts for the demo, the tests and the benchmarks, never for real work.

Every answer says so: the header ``x-tierfleet-simulated: 1`` and a
``[simulated <model>]`` prefix (or ``"simulated": true`` in JSON answers).

* :class:`SimFleet` - hosts from a FleetConfig in this process (threads).
* :class:`SimProcess` - the same as ``python -m tierfleet.lab.sim`` in a child process;
  :class:`SimAdmin` drives it through its admin endpoint.
* :func:`write_config` - the config with the sim's real ports, for worker subprocesses.
"""

from __future__ import annotations

from ..processes import free_port
from .answers import PROFILES, Profile, compose, profile_for
from .client import SimAdmin, SimProcess
from .configfile import dump_config, write_config
from .faults import FAULT_KINDS, Fault
from .fleet import SCALE_ENV, SimFleet
from .server import SimHost
from .wire import ModelInfo

__all__ = [
    "FAULT_KINDS",
    "PROFILES",
    "SCALE_ENV",
    "Fault",
    "ModelInfo",
    "Profile",
    "SimAdmin",
    "SimFleet",
    "SimHost",
    "SimProcess",
    "compose",
    "dump_config",
    "free_port",
    "profile_for",
    "write_config",
]
