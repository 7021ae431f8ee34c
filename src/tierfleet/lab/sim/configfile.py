"""Write a FleetConfig back to TOML, so worker subprocesses read the sim's real ports.

A test or the demo starts the sim on free ports in-process, then hands
``write_config(sim.config, path)`` to workers through ``TIERFLEET_CONFIG``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ...config import FleetConfig

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items() if x is not None) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _inline(path: list[str], v: Any) -> bool:
    # Small maps inside a table (a tier's models) read better inline.
    return (
        isinstance(v, dict)
        and bool(v)
        and len(path) >= 2
        and all(not isinstance(x, dict | list) for x in v.values())
    )


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _table(path: list[str], data: dict[str, Any], out: list[str]) -> None:
    plain = {
        k: v
        for k, v in data.items()
        if v is not None and (not isinstance(v, dict) or _inline(path, v)) and not _is_table_array(v)
    }
    if path and (plain or not data):
        out.append(f"\n[{'.'.join(_key(p) for p in path)}]")
    # Keys first, then sub-tables: a key after a [header] would land in that sub-table.
    for k, v in plain.items():
        out.append(f"{_key(k)} = {_value(v)}")
    for k, v in data.items():
        if isinstance(v, dict) and not _inline(path, v):
            _table([*path, k], v, out)
    for k, v in data.items():
        if _is_table_array(v):
            for item in v:
                out.append(f"\n[[{'.'.join(_key(p) for p in [*path, k])}]]")
                for ik, iv in item.items():
                    if iv is not None:
                        out.append(f"{_key(ik)} = {_value(iv)}")


def dump_config(config: FleetConfig) -> str:
    data = config.model_dump(mode="json", exclude={"source"})
    out: list[str] = ["# written by tierfleet.lab.sim: simulated hosts on their actual ports"]
    _table([], data, out)
    return "\n".join(out) + "\n"


def write_config(config: FleetConfig, path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    p.write_text(dump_config(config), encoding="utf-8")
    return p
