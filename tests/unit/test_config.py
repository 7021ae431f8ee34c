from __future__ import annotations

from pathlib import Path

import pytest

from tierfleet.config import load_config
from tierfleet.errors import ConfigError


def test_builtin_defaults_load() -> None:
    cfg = load_config(Path(__file__).parents[2] / "src/tierfleet/defaults.toml")
    assert list(cfg.tiers) == ["rules", "local-mac", "local-gpu", "runpod", "paid"]
    assert cfg.baseline_model() == "gpt-5.5"
    assert not cfg.tier_allowed("paid", "confidential")
    assert cfg.tier_allowed("local-gpu", "confidential")


def test_env_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "f.toml"
    from tests.support.fleets import rules_only

    p.write_text('redis_url = "redis://file:1/0"\n' + rules_only())
    monkeypatch.setenv("TIERFLEET_REDIS_URL", "redis://env:2/0")
    monkeypatch.setenv("TIERFLEET_POLICY__P_SMALL_OK_THRESHOLD", "0.6")
    cfg = load_config(p)
    assert cfg.redis_url == "redis://env:2/0"
    assert cfg.policy.p_small_ok_threshold == 0.6


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('[tiers.paid]\nplace = "paid"\n[hosts.x]\nkind = "openai"\nurl = "http://x"\n'
         'tier = "paid"\nmodels = ["m"]\n[models.m]\n', "no input_per_mtok"),
        ('[tiers.a]\nplace = "local"\nfallback = ["b"]\n', "unknown tier 'b'"),
        ('[tiers.a]\nplace = "local"\ncolour = 1\n', "colour"),
        ("not toml = = =", "not valid TOML"),
        ('[tiers.a]\nplace = "local"\n[reliability]\nvisibility_timeout_s = 10\n'
         "task_time_limit_s = 20\n", "below visibility_timeout_s"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path: Path, body: str, needle: str) -> None:
    p = tmp_path / "f.toml"
    p.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert needle in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_unreadable_configs_are_one_line_errors(tmp_path: Path) -> None:
    """A directory, bytes that are not UTF-8, several bad fields: each a ConfigError on
    one line naming the file and the fields (the CLI prints it as its one error line)."""
    folder = tmp_path / "fleet.toml"
    folder.mkdir()
    with pytest.raises(ConfigError, match=r"cannot read config file .*Is a directory"):
        load_config(folder)
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'redis_url = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(latin)
    two = tmp_path / "two.toml"
    two.write_text('[tiers.a]\nplace = "local"\ncolour = 1\n[reliability]\nmax_attempts = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(two)
    text = str(info.value)
    assert "\n" not in text and "errors.pydantic.dev" not in text, text
    assert "tiers.a.colour" in text and "reliability.max_attempts" in text, text
