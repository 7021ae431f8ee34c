"""log_slice: level, time window, pattern and line budget over real log shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import tierfleet.config
from tierfleet import rules
from tierfleet.config import FleetConfig, LimitsConfig, load_config
from tierfleet.errors import JobRejected
from tierfleet.jobs import Kind
from tierfleet.rules import RuleFailed
from tierfleet.rules.log_slice import detect_level, parse_stamp

CONFIG = load_config(Path(tierfleet.config.__file__).with_name("defaults.toml"))
FAST = CONFIG.model_copy(update={"limits": LimitsConfig(regex_timeout_s=0.2)})

APP_LOG = """\
2026-11-21 01:58:02,114 INFO  api: started worker pool size=8
2026-11-21 02:00:00,001 INFO  api: nightly import begins
2026-11-21 02:03:11,530 ERROR db: connection pool exhausted
Traceback (most recent call last):
  File "/srv/app/db.py", line 88, in get
    conn = pool.get(timeout=5)
TimeoutError: no connection within 5s
2026-11-21 02:07:45,002 WARNING api: retrying import batch 3
2026-11-21 02:12:00,919 ERROR billing: invoice 8812 rejected by provider
2026-11-21 02:15:59,999 CRITICAL api: import aborted
2026-11-21 02:16:00,000 ERROR db: pool still exhausted
"""


def slice_(config: FleetConfig = CONFIG, **payload: Any) -> dict:
    out = rules.execute(Kind.LOG_SLICE, payload, config)
    json.dumps(out)
    return out


def test_errors_in_a_quarter_hour_keep_their_stack_trace() -> None:
    out = slice_(text=APP_LOG, levels=["ERROR"], start="02:00", end="02:15")
    assert out["lines"] == [
        "2026-11-21 02:03:11,530 ERROR db: connection pool exhausted",
        "Traceback (most recent call last):",
        '  File "/srv/app/db.py", line 88, in get',
        "    conn = pool.get(timeout=5)",
        "TimeoutError: no connection within 5s",
        "2026-11-21 02:12:00,919 ERROR billing: invoice 8812 rejected by provider",
    ]
    assert out["count"] == out["total"] == 6 and out["truncated"] is False


def test_end_is_inclusive_at_its_precision() -> None:
    minute = slice_(text=APP_LOG, levels=["critical"], start="02:00", end="02:15")
    assert minute["lines"] == ["2026-11-21 02:15:59,999 CRITICAL api: import aborted"]
    second = slice_(text=APP_LOG, start="02:15:59", end="02:16:00")
    assert second["count"] == 2
    exact = slice_(text=APP_LOG, start="02:16:00.0", end="02:16:00.0")
    assert exact["lines"] == ["2026-11-21 02:16:00,000 ERROR db: pool still exhausted"]


def test_several_levels_and_a_pattern() -> None:
    out = slice_(text=APP_LOG, levels=["error", "WARN"], pattern=r"import|invoice")
    assert [ln[24:] for ln in out["lines"]] == [
        "WARNING api: retrying import batch 3",
        "ERROR billing: invoice 8812 rejected by provider",
    ]
    ci = slice_(text=APP_LOG, pattern="POOL", flags=["IGNORECASE"])
    assert ci["count"] == 4  # per line: "pool size", "pool exhausted", "pool.get", "pool still"
    assert slice_(text=APP_LOG, pattern="POOL")["count"] == 0


def test_datetime_window() -> None:
    out = slice_(text=APP_LOG, start="2026-11-21T02:07:00", end="2026-11-21T02:12:00")
    assert out["count"] == 2
    whole_day = slice_(text=APP_LOG, start="2026-11-21", end="2026-11-21")
    assert whole_day["count"] == len(APP_LOG.splitlines())
    other_day = slice_(text=APP_LOG, start="2026-11-22T00:00")
    assert other_day["count"] == 0


def test_offsets_are_honoured_when_both_sides_have_one() -> None:
    log = "2026-11-21T02:05:00+02:00 level=error msg=a\n2026-11-21T02:05:00Z level=error msg=b\n"
    out = slice_(text=log, start="2026-11-21T00:00:00Z", end="2026-11-21T00:10:00Z")
    assert out["lines"] == ["2026-11-21T02:05:00+02:00 level=error msg=a"]
    naive = slice_(text=log, start="2026-11-21T02:00", end="2026-11-21T02:10")
    assert naive["count"] == 2  # no offset in the window: clock times as written


def test_window_across_midnight() -> None:
    log = "23:40:00 INFO a\n23:55:00 INFO b\n00:05:00 INFO c\n00:20:00 INFO d\n"
    assert slice_(text=log, start="23:50", end="00:10")["lines"] == [
        "23:55:00 INFO b", "00:05:00 INFO c"]


def test_syslog_nginx_apache_glog_logcat_json() -> None:
    log = "\n".join([
        "May  1 02:00:03 gw sshd[812]: error: maximum authentication attempts exceeded",
        "2026/05/01 02:00:04 [error] 1201#0: *7 upstream timed out",
        '10.0.0.9 - - [01/May/2026:02:00:05 +0000] "GET /health HTTP/1.1" 200 2',
        "[Fri May 01 02:00:06.120391 2026] [core:error] [pid 44] AH00037: Symbolic link",
        "E0501 02:00:07.000123  5150 server.cc:71] RPC failed",
        "05-01 02:00:08.412  1802  1840 E ActivityManager: ANR in com.app",
        '{"ts":"2026-05-01T02:00:09Z","level":"error","msg":"queue full"}',
        "2026-05-01 02:00:10.517 | ERROR    | app.jobs:run:88 - job crashed",
        "2026-05-01 02:30:00 ERROR outside the window",
    ])
    out = slice_(text=log, levels=["E"], start="2026-05-01T02:00", end="2026-05-01T02:10")
    assert out["count"] == 7
    assert not any("GET /health" in ln or "outside" in ln for ln in out["lines"])


@pytest.mark.parametrize(
    ("line", "level"),
    [
        ("2026-05-01 02:00:00 ERROR x", "ERROR"),
        ("2026-05-01 02:00:00 [warn] x", "WARNING"),
        ("<info> x", "INFO"),
        ("ts=1 level=debug msg=x", "DEBUG"),
        ('{"level": "fatal"}', "CRITICAL"),
        ("PHP Fatal error:  Uncaught", "CRITICAL"),
        ("ERROR:root:x", "ERROR"),
        ("W0501 02:00:00.1 1 f.cc:1] x", "WARNING"),
        ("V/Tag(1): x", "TRACE"),
        ("12:00:01 NOTICE x", "INFO"),
        ("  at com.x.Y.z(Y.java:12)", None),
        ("an error occurred", None),  # lower-case prose is not a level
    ],
)
def test_level_shapes(line: str, level: str | None) -> None:
    stamp = parse_stamp(line)
    assert detect_level(line, stamp.end if stamp else None) == level


def test_bare_time_only_near_the_start() -> None:
    assert parse_stamp("02:00:01 started") is not None
    assert parse_stamp("[02:00] INFO x") is not None
    assert parse_stamp("meeting moved, see you at 12:30") is None


def test_lines_before_any_timestamp_are_outside_a_window() -> None:
    log = "preamble\n02:00:00 INFO in\n"
    assert slice_(text=log, start="01:00")["lines"] == ["02:00:00 INFO in"]
    assert slice_(text=log)["count"] == 2  # no window: every line


def test_line_budget_first_and_last() -> None:
    log = "".join(f"02:{m:02d}:00 ERROR e{m}\n" for m in range(30))
    first = slice_(text=log, max_lines=3)
    assert [ln[-3:] for ln in first["lines"]] == [" e0", " e1", " e2"]
    assert first["count"] == 3 and first["total"] == 30 and first["truncated"] is True
    last = slice_(text=log, max_lines=2, keep="last")
    assert [ln[-3:] for ln in last["lines"]] == ["e28", "e29"]


def test_hostile_pattern_times_out_cleanly() -> None:
    log = "".join("02:00:00 INFO " + "a" * 40 + "!\n" for _ in range(5))
    with pytest.raises(RuleFailed, match=r"pattern timed out after 0\.2s"):
        slice_(FAST, text=log, pattern=r"(a|aa)+$")


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "input.text"),
        ({"text": "x", "levels": []}, "input.levels"),
        ({"text": "x", "levels": ["ERROR", "LOUD"]}, "input.levels[1]"),
        ({"text": "x", "start": "25:00"}, "input.start"),
        ({"text": "x", "start": "yesterday"}, "input.start"),
        ({"text": "x", "end": "02:61"}, "input.end"),
        ({"text": "x", "start": "02:00", "end": "2026-01-01T03:00"}, "input.end"),
        ({"text": "x", "start": "2026-01-02", "end": "2026-01-01"}, "input.end"),
        ({"text": "x", "start": "2026-01-01T00:00Z", "end": "2026-01-02T00:00"}, "input.end"),
        ({"text": "x", "pattern": "("}, "input.pattern"),
        ({"text": "x", "pattern": "(x+)*"}, "input.pattern"),
        ({"text": "x", "flags": ["I"]}, "input.flags"),
        ({"text": "x", "pattern": "x", "flags": ["Z"]}, "input.flags[0]"),
        ({"text": "x", "max_lines": 0}, "input.max_lines"),
        ({"text": "x", "keep": "middle"}, "input.keep"),
    ],
)
def test_rejections_name_the_field(payload: dict, field: str) -> None:
    with pytest.raises(JobRejected) as info:
        rules.validate(Kind.LOG_SLICE, payload, CONFIG.limits)
    assert info.value.field == field, str(info.value)


def test_window_at_the_end_of_time_does_not_overflow() -> None:
    out = slice_(text=APP_LOG, start="2026-11-21T02:15", end="9999-12-31")
    assert out["count"] == 2
