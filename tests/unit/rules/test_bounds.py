"""Every rules job is bounded at run time in CPU time, memory and output bytes, per kind,
from ``[limits.rules]``; past a bound it is a RuleFailed naming the limit, and the next
job is served as usual."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tierfleet.config
from tierfleet import rules
from tierfleet.config import FleetConfig, LimitsConfig, RulesLimits, load_config
from tierfleet.jobs import RULES_KINDS, Kind
from tierfleet.rules import RuleFailed

CONFIG = load_config(Path(tierfleet.config.__file__).with_name("defaults.toml"))
# Well over 0.05 s of CPU: 40,000 texts to validate and normalise (1.4 MB, under the payload limit).
SLOW_DEDUPE = {"items": [f"Ticket number {i} is about the VPN" for i in range(40_000)]}
NORMAL = {"items": ["a", "A", "b"]}


def with_rules(**kw: Any) -> FleetConfig:
    limits = CONFIG.limits.model_copy(update={"rules": RulesLimits(**kw)})
    return CONFIG.model_copy(update={"limits": limits})


def fails(kind: str, payload: Any, config: FleetConfig) -> str:
    with pytest.raises(RuleFailed) as info:
        rules.execute(kind, payload, config)
    assert info.value.kind == kind
    return info.value.message


@pytest.mark.parametrize("isolation", ["fork", "inline"])
def test_cpu_time_is_bounded_and_the_next_job_runs(isolation: str) -> None:
    cfg = with_rules(cpu_s=0.05, isolation=isolation)
    assert "limits.rules.cpu_s" in fails("dedupe", SLOW_DEDUPE, cfg)
    assert rules.execute("dedupe", NORMAL, cfg)["unique"] == ["a", "b"]


def test_memory_is_bounded_in_the_helper_and_the_next_job_runs() -> None:
    # Every match captures the rest of the text: ~10,000 copies of up to 200 KB.
    hog = {"text": "a" * 200_000, "pattern": "(?=(a*))", "max_matches": 10_000}
    cfg = with_rules(memory_mb=64, output_bytes=10**10, cpu_s=30)
    assert "limits.rules.memory_mb" in fails("regex_extract", hog, cfg)
    assert rules.execute("dedupe", NORMAL, cfg)["count_out"] == 2


def test_output_bytes_are_bounded() -> None:
    hog = {"text": "a" * 200_000, "pattern": "(?=(a*))", "max_matches": 10_000}
    assert "limits.rules.output_bytes" in fails("regex_extract", hog, CONFIG)
    small = with_rules(output_bytes=1_000)
    assert "limits.rules.output_bytes" in fails("dedupe", {"items": [f"t{i}" for i in range(1_000)]},
                                                small)
    assert "limits.rules.output_bytes" in fails(
        "log_slice", {"text": "\n".join(["02:00:00 ERROR x" * 10] * 500), "max_lines": 500}, small
    )


def test_per_kind_bounds_come_from_the_config_file(tmp_path: Path) -> None:
    text = Path(tierfleet.config.__file__).with_name("defaults.toml").read_text()
    text += "\n[limits.rules.dedupe]\ncpu_s = 0.05\n"
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.limits.rules.for_kind("dedupe").cpu_s == 0.05
    assert cfg.limits.rules.for_kind("log_slice").cpu_s == cfg.limits.rules.cpu_s
    message = fails("dedupe", SLOW_DEDUPE, cfg)
    assert "limits.rules.cpu_s = 0.05s for dedupe" in message


def test_uniqueitems_over_thirty_thousand_objects_is_answered_quickly() -> None:
    doc = [{"id": i, "tags": [str(i)]} for i in range(30_000)]
    cfg = with_rules(cpu_s=20)
    assert rules.execute("json_validate", {"document": doc, "schema": {"uniqueItems": True}},
                         cfg)["valid"] is True
    doc.append({"tags": ["7"], "id": 7.0})  # equal to item 7: 7 == 7.0, key order ignored
    out = rules.execute("json_validate", {"document": doc, "schema": {"uniqueItems": True}}, cfg)
    assert out["valid"] is False and out["errors"][0]["keyword"] == "uniqueItems"
    # True is not 1 in JSON Schema.
    assert rules.execute("json_validate", {"document": [1, True], "schema": {"uniqueItems": True}},
                         cfg)["valid"] is True


def test_a_catastrophic_pattern_the_static_check_misses_times_out_cleanly() -> None:
    cfg = CONFIG.model_copy(update={"limits": LimitsConfig(regex_timeout_s=0.2)})
    message = fails("regex_extract", {"text": "a" * 3_000 + "!", "pattern": "^(a|aa)+$"}, cfg)
    assert "timed out" in message


def test_helpers_serve_threads_at_once() -> None:
    out: list[Any] = []

    def one(i: int) -> None:
        try:
            out.append(rules.execute("dedupe", {"items": [str(i), str(i)]}, CONFIG)["count_out"])
        except Exception as exc:  # collected, asserted below
            out.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert out == [1] * 6


_hostile_leaf = st.one_of(
    st.text(alphabet=st.characters(codec=None), max_size=30),
    st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.none(), st.booleans(),
    st.just("\ud800"), st.just(10**400),
)
_hostile = st.recursive(_hostile_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=30)
_FIELDS = ["items", "normalise", "max_duplicates", "document", "schema", "parse", "max_errors",
           "text", "pattern", "flags", "max_matches", "levels", "start", "end", "max_lines", "keep",
           "rules", "default"]


@pytest.mark.parametrize("kind", sorted(RULES_KINDS))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.dictionaries(st.sampled_from(_FIELDS), _hostile, max_size=5),
       depth=st.sampled_from([0, 0, 0, 200, 5_000]))
def test_any_payload_is_an_answer_or_a_rulefailed(kind: Kind, payload: dict[str, Any], depth: int) -> None:
    for _ in range(depth):
        payload = {"text": payload}
    try:
        out = rules.execute(kind, payload, CONFIG)
    except RuleFailed as exc:
        assert exc.message
    else:
        assert len(json.dumps(out, allow_nan=False).encode()) <= CONFIG.limits.rules.output_bytes
