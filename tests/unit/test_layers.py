"""The package's layers, read from its import graph (ast, nothing imported).

The core (the flat root and ``policy/``, ``rules/``, ``backends/``) never imports
a wing (``api/``, ``reports/``, ``lab/``, ``cli/``): a producer installs the core
alone, and a change to a wing cannot break routing or delivery. ``lab/sim``
speaks to the backends only through their public names, so it tests the
contract rather than the clients' insides. Lazy imports inside functions count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "tierfleet"
WINGS = ("api", "reports", "lab", "cli")
# Core modules allowed to reach a wing, each for its reason:
EXEMPT = {
    # The package's front door: tierfleet.report() is the spend report's public entry.
    "tierfleet": {"tierfleet.reports.spend"},
    # The Flower launcher applies the API's loopback rule (no FastAPI needed for it).
    "tierfleet.flower": {"tierfleet.api.auth"},
    # ``python -m tierfleet`` is the command line.
    "tierfleet.__main__": {"tierfleet.cli"},
}


def module_name(path: Path) -> str:
    parts = ("tierfleet", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


_ALL_MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, as absolute dotted names (``from . import x`` too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            found.add(origin)
            # ``from .sim import wire`` imports the module tierfleet...sim.wire (a name
            # that is no module, ``from .api import is_loopback``, adds nothing).
            found.update(sub for alias in node.names
                         if (sub := f"{origin}.{alias.name}") in _ALL_MODULES)
    return {m for m in found if m == "tierfleet" or m.startswith("tierfleet.")}


def is_wing(module: str) -> bool:
    parts = module.split(".")
    return len(parts) > 1 and parts[1] in WINGS


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
CORE = sorted(m for m in MODULES if not is_wing(m))


def test_the_walk_sees_the_whole_package() -> None:
    # A guard on the test itself: a broken walk would pass everything below.
    assert {"tierfleet.runner", "tierfleet.policy.stages", "tierfleet.backends.ollama",
            "tierfleet.api.app", "tierfleet.lab.sim.server"} <= set(MODULES)
    assert "tierfleet.api.errors" in imports_of(MODULES["tierfleet.api.app"])
    assert "tierfleet.dispatch" in imports_of(MODULES["tierfleet.api.app"])


@pytest.mark.parametrize("module", CORE)
def test_the_core_imports_no_wing(module: str) -> None:
    reached = {m for m in imports_of(MODULES[module]) if is_wing(m)}
    assert reached <= EXEMPT.get(module, set()), f"{module} imports {sorted(reached)}"


def test_the_exemptions_are_still_needed() -> None:
    # An exemption nobody uses any more is a hole left open: remove it.
    for module, allowed in EXEMPT.items():
        assert allowed <= imports_of(MODULES[module]), module


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("tierfleet.lab.sim")))
def test_the_sim_uses_only_public_backend_names(module: str) -> None:
    private = {m for m in imports_of(MODULES[module])
               if m.startswith("tierfleet.backends.") and
               any(part.startswith("_") for part in m.split(".")[2:])}
    assert not private, f"{module} imports {sorted(private)}"
