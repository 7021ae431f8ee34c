"""The home-lab example fleet, defined once: the built-in ``defaults.toml`` on loopback.

A Mac mini with a 4B model, an RTX 3060 box with the 30B code, 8B reasoning and
vision models, Runpod Serverless and a paid provider: the tiers, models and
prices of ``defaults.toml``, with every host SIMULATED on ``127.0.0.1`` port 0
(``SimFleet`` picks free ports and gives the config with the real ones). The
demo, the benchmarks and the tests build their fleets from :func:`home_lab`,
each with its own host names, timeouts and overrides, so a change to the
example fleet is made in one place.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Mapping
from importlib.resources import files
from typing import Any

__all__ = ["HOST_ROLES", "home_lab", "merge"]

# role -> the host's name in defaults.toml; callers name the hosts by role.
HOST_ROLES: dict[str, str] = {"mac": "ollama", "gpu": "ollama-gpu", "runpod": "runpod",
                              "paid": "openai"}
# Where each protocol answers on a simulated host (port 0: any free port).
_LOOPBACK_URLS: dict[str, str] = {
    "ollama": "http://127.0.0.1:0",
    "runpod": "http://127.0.0.1:0/v2/sim-endpoint",
    "openai": "http://127.0.0.1:0/v1",
}


def _defaults() -> dict[str, Any]:
    text = files("tierfleet").joinpath("defaults.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``changes`` table by table; a None value removes the key."""
    for key, value in changes.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def home_lab(*, names: Mapping[str, str] | None = None, key_envs: Mapping[str, str] | None = None,
             host_defaults: Mapping[str, Any] | None = None,
             overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The fleet's config data (for ``FleetConfig(**data)``), every host simulated.

    ``names`` renames hosts by role (``{"gpu": "rtx-3060"}``; roles in :data:`HOST_ROLES`),
    ``key_envs`` names the API key variable of the ``runpod`` and ``paid`` hosts,
    ``host_defaults`` goes into every host (timeouts), and ``overrides`` is merged last
    (:func:`merge`), with hosts under their new names.
    """
    data = _defaults()
    data.pop("redis_url", None)  # the caller's Redis, never the built-in localhost one
    data.pop("rules", None)  # the example keyword routes are the built-in config's own
    hosts = data["hosts"]
    renamed: dict[str, Any] = {}
    for role, builtin in HOST_ROLES.items():
        host = hosts[builtin]
        host["url"] = _LOOPBACK_URLS[host["kind"]]
        host["simulated"] = True
        if key_envs and role in key_envs:
            host["api_key_env"] = key_envs[role]
        host.update(copy.deepcopy(dict(host_defaults or {})))
        renamed[(names or {}).get(role, builtin)] = host
    data["hosts"] = renamed
    # The sims' vision model reads a smaller window than the 30B models beside it.
    data["models"]["granite3.2-vision:2b"]["context_window"] = 16384
    return merge(data, overrides or {})
