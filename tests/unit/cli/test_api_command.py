"""``tierfleet api`` says who may call it before it serves: the producers behind the
tokens (names only, never a token), and where the schema is."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

import tierfleet.api
from tierfleet.cli import app as cli_app
from tierfleet.config import FleetConfig


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch, core_config: FleetConfig) -> list[Any]:
    calls: list[Any] = []
    monkeypatch.setattr("tierfleet.cli.ops.get", lambda _path: core_config)
    monkeypatch.setattr(tierfleet.api, "serve", lambda *a, **k: calls.append((a, k)))
    return calls


def test_the_banner_names_the_producers_and_no_token(
        monkeypatch: pytest.MonkeyPatch, served: list[Any], core_config: FleetConfig) -> None:
    monkeypatch.setenv(core_config.api.tokens_env, "alpha:tok-a1,alpha:tok-a2,tok-bare")
    out = CliRunner().invoke(cli_app, ["api"], catch_exceptions=False)
    assert out.exit_code == 0 and len(served) == 1
    assert "2 producer(s): alpha, default" in out.output
    assert "/openapi.json" in out.output and "/docs" not in out.output
    assert "tok-" not in out.output


def test_a_malformed_token_entry_is_one_line_and_serves_nothing(
        monkeypatch: pytest.MonkeyPatch, served: list[Any], core_config: FleetConfig) -> None:
    monkeypatch.setenv(core_config.api.tokens_env, "not a name:tok-secret-1")
    out = CliRunner().invoke(cli_app, ["api"])
    assert out.exit_code != 0 and served == []
    assert "name:token" in out.output and "tok-secret-1" not in out.output
