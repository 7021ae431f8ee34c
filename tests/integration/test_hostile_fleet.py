"""Hostile rules jobs on a real worker: each ends FAILED naming the limit it hit (or is
refused at submit), the worker stays up, and normal jobs submitted right after are
served. Count in = count out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.harness import Worker, write_config
from tierfleet.config import load_config
from tierfleet.dispatch import Dispatcher
from tierfleet.errors import JobRejected

pytestmark = pytest.mark.integration

# Tight bounds so each hostile job trips its own one quickly; the body is appended
# after the harness's rules-only tiers.
LIMITS = """
[limits]
regex_timeout_s = 0.5

[limits.rules]
cpu_s = 1.0
memory_mb = 128

[limits.rules.dedupe]
cpu_s = 0.1

[limits.rules.regex_extract]
memory_mb = 64
output_bytes = 10_000_000_000

[limits.rules.log_slice]
output_bytes = 2_000
"""

HOSTILE: list[tuple[dict[str, Any], str]] = [
    # 45,000 texts to validate and normalise: about a second of CPU, over dedupe's cpu_s = 0.1.
    ({"kind": "dedupe", "input": {"items": [f"Ticket {i} about the VPN, again!" for i in range(45_000)]}},
     "limits.rules.cpu_s"),
    # Every match captures the rest of the text: gigabytes, over memory_mb = 64.
    ({"kind": "regex_extract", "input": {"text": "a" * 200_000, "pattern": "(?=(a*))",
                                         "max_matches": 10_000}}, "limits.rules.memory_mb"),
    # A backtracking pattern the static check lets through: the regex timeout.
    ({"kind": "regex_extract", "input": {"text": "a" * 5_000 + "!", "pattern": "^(a|aa)+$"}}, "timed out"),
    # 500 matching lines, over log_slice's 2,000 output bytes.
    ({"kind": "log_slice", "input": {"text": "\n".join(["02:00:00 ERROR disk full on /var"] * 500),
                                     "max_lines": 1_000}}, "limits.rules.output_bytes"),
]

REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"kind": "json_validate", "input": {"document": 1, "schema": {
        "$ref": "#/$defs/d0",
        "$defs": {**{f"d{i}": {"allOf": [{"$ref": f"#/$defs/d{i + 1}"}, {"$ref": f"#/$defs/d{i + 1}"}]}
                     for i in range(24)}, "d24": {"type": "integer"}}}}}, "input.schema"),
    ({"kind": "dedupe", "input": {"items": ["\ud800"]}}, "input.items[0]"),
    ({"kind": "summary", "prompt": "x", "max_cost_usd": float("nan")}, "max_cost_usd"),
]


@pytest.mark.parametrize("pool", ["prefork", "threads"])
@pytest.mark.timeout(300)
def test_hostile_jobs_fail_cleanly_and_the_next_jobs_are_served(
    tmp_path: Path, redis_url: str, rclient: redis.Redis, pool: str
) -> None:
    from tests.support.harness import RULES_ONLY

    cfg_path = write_config(tmp_path / "fleet.toml", redis_url, RULES_ONLY + LIMITS)
    config = load_config(cfg_path)
    assert config.limits.rules.for_kind("log_slice").output_bytes == 2_000
    worker = Worker("rules", cfg_path, concurrency=2, pool=pool).start(rclient)
    try:
        d = Dispatcher(config)
        for job, field in REFUSED:
            with pytest.raises(JobRejected) as info:
                d.submit(job)
            assert info.value.field == field
        hostile = [d.submit(j).id for j, _ in HOSTILE]
        normal = [d.submit({"kind": "dedupe", "input": {"items": [f"n{i}", f"N{i}", "x"]}}).id
                  for i in range(20)]
        results = d.results_for(hostile + normal, timeout=240)
        assert len(results) == len(hostile) + len(normal)
        for r, (_, limit) in zip(results, HOSTILE, strict=False):
            assert r.status.value == "failed", r
            assert r.error and limit in r.error, r.error
        for r in results[len(hostile):]:
            assert r.status.value == "succeeded", r
            assert r.output["count_out"] == 2
        assert worker.proc is not None and worker.proc.poll() is None, "the worker died"
    finally:
        worker.stop()
