"""``log_slice``: the lines of a log in a time window, at given levels, matching a pattern.

Input::

    {"text": "2024-05-01 02:03:11 ERROR db: timeout\\n  at pool.get\\n...",
     "levels": ["ERROR", "critical"], "start": "02:00", "end": "02:15",
     "pattern": "db|pool", "flags": ["IGNORECASE"], "max_lines": 200, "keep": "first"}

- ``text`` (required): the log. Logs are data, often larger than any prompt: only
  the payload limit (``limits.max_payload_bytes``) bounds them.
- ``levels`` (optional, non-empty): keep lines at these levels. Names are
  case-insensitive and folded to six levels: CRITICAL (critical, crit, fatal,
  emerg, alert, panic, F, C, A), ERROR (error, err, severe, E), WARNING (warning,
  warn, W), INFO (info, notice, I), DEBUG (debug, fine, D), TRACE (trace,
  verbose, finer, finest, V).
- ``start`` / ``end`` (optional): the window, both as times of day (``HH:MM``,
  ``HH:MM:SS[.ffffff]``) or both as ISO 8601 dates/datetimes
  (``2024-05-01``, ``2024-05-01T02:00``, ``2024-05-01 02:00:00+02:00``).
  ``end`` is inclusive at its own precision: ``"02:15"`` keeps 02:15:59, a bare
  date keeps its whole day. A time-of-day window with ``start`` after ``end``
  wraps midnight (``23:50``..``00:10``). A time-of-day window compares each
  line's clock time, whatever its date.
- ``pattern`` / ``flags`` (optional): a regular expression each kept line must
  contain (same rules and flags as ``regex_extract``), sharing one time budget
  (``limits.regex_timeout_s``).
- ``max_lines`` (1..10,000, default 200) and ``keep`` (``first`` or ``last``):
  the line budget, and which end of the slice to keep when it is over.

Recognised in each line: timestamps as ISO 8601 / ``YYYY-MM-DD HH:MM:SS[,mmm]``,
``YYYY/MM/DD HH:MM:SS``, Apache ``01/May/2024:02:00:00 +0000``, syslog
``May  1 02:00:00``, logcat ``05-01 02:00:00.123``, glog ``E0501 02:00:00.123``
and a bare ``HH:MM[:SS]`` near the start of the line; levels as ``ERROR``,
``[error]``, ``<warn>``, ``[core:error]``, ``level=error``, ``"level":"error"``,
``Error:``, glog/logcat letters. A line with no timestamp takes the previous
line's (so a stack trace stays with its entry); a line with neither timestamp nor
level also takes the previous line's level. Lines with no timestamp before
them are outside any time window.

Against a date window, a line with no year (syslog) takes the window's year, a
line with only a clock time takes the date of the last dated line (else the
window's); offsets are honoured when both the window and the line carry one,
otherwise clock times are compared as written.

Output::

    {"lines": ["2024-05-01 02:03:11 ERROR db: timeout", "  at pool.get"],
     "count": 2, "total": 2, "truncated": false}

``count`` is the number of lines returned, ``total`` the number that matched.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any, Literal

import regex
from pydantic import Field, StrictInt, StrictStr

from ..config import FleetConfig, LimitsConfig
from ..errors import JobRejected
from ._common import RegexBudget, RuleFailed, RuleInput, compile_pattern, parse_flags

MAX_LINES = 10_000

# -- levels ---------------------------------------------------------------------------

LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "TRACE")
_WORDS = {
    **dict.fromkeys(
        ("critical", "crit", "fatal", "emerg", "emergency", "alert", "panic"), "CRITICAL"
    ),
    **dict.fromkeys(("error", "err", "severe"), "ERROR"),
    **dict.fromkeys(("warning", "warn"), "WARNING"),
    **dict.fromkeys(("info", "information", "informational", "notice"), "INFO"),
    **dict.fromkeys(("debug", "fine"), "DEBUG"),
    **dict.fromkeys(("trace", "verbose", "finer", "finest"), "TRACE"),
}
_LETTERS = {"F": "CRITICAL", "C": "CRITICAL", "A": "CRITICAL", "E": "ERROR", "W": "WARNING",
            "I": "INFO", "D": "DEBUG", "V": "TRACE"}

# Only the first characters of a line are searched for a bare level word: further
# on, "ERROR" is more likely part of the message than the entry's level.
_HEAD = 120
_KV_LEVEL = re.compile(
    r"\b(?:level|lvl|severity|loglevel|log_level)\"?\s*[=:]\s*\"?(?P<w>[A-Za-z]+)", re.IGNORECASE
)
_BRACKET_LEVEL = re.compile(r"[\[<(]\s*(?:[\w.-]+:)?(?P<w>[A-Za-z]+)\s*[\]>)]")
_UPPER_LEVEL = re.compile(
    r"\b(?P<w>CRITICAL|FATAL|ERROR|ERR|WARNING|WARN|INFO|NOTICE|DEBUG|TRACE|CRIT|ALERT|EMERG"
    r"|SEVERE|VERBOSE|PANIC)\b"
)
# "Error:", "PHP Fatal error:", sshd's "error: ..." - a level word ending in a colon.
_COLON_LEVEL = re.compile(
    r"\b(?P<w>critical|fatal|error|warning|warn|notice|info|debug|trace)(?: error)?:", re.IGNORECASE
)
_GLOG_LEVEL = re.compile(r"(?P<l>[IWEF])\d{4} ")
_LOGCAT_BRIEF_LEVEL = re.compile(r"(?P<l>[VDIWEFA])/")
_AFTER_STAMP_LETTER = re.compile(r"\s+(?:\d+\s+)*(?P<l>[VDIWEFC])\s")


def canonical_level(name: str) -> str | None:
    name = name.strip()
    if len(name) == 1:
        return _LETTERS.get(name.upper())
    return _WORDS.get(name.lower()) or (name.upper() if name.upper() in LEVELS else None)


def detect_level(line: str, stamp_end: int | None) -> str | None:
    for shape in (_GLOG_LEVEL, _LOGCAT_BRIEF_LEVEL):
        m = shape.match(line)
        if m:
            return _LETTERS[m.group("l")]
    # An explicit level=/"level": key says it outright, wherever it sits. (The
    # substring tests skip a case-insensitive regex scan on most lines.)
    low = line.lower()
    if "lev" in low or "lvl" in low or "sever" in low:
        m = _KV_LEVEL.search(line)
        if m and (lvl := _WORDS.get(m.group("w").lower())):
            return lvl
    head = line[:_HEAD]
    best: tuple[int, str] | None = None
    shapes = (_UPPER_LEVEL, _COLON_LEVEL) if ":" in head else (_UPPER_LEVEL,)
    for shape in shapes:
        m = shape.search(head)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), _WORDS[m.group("w").lower()])
    brackets = _BRACKET_LEVEL.finditer(head) if "[" in head or "<" in head or "(" in head else ()
    for m in brackets:
        if best is not None and m.start() >= best[0]:
            break
        lvl = _WORDS.get(m.group("w").lower())
        if lvl:
            best = (m.start(), lvl)
            break
    if best:
        return best[1]
    if stamp_end is not None:
        m = _AFTER_STAMP_LETTER.match(line, stamp_end)
        if m:
            return _LETTERS[m.group("l")]
    return None


# -- timestamps -----------------------------------------------------------------------

_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_MON = r"(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = r"(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:[.,](?P<F>\d{1,9}))?)?"
_TZ = r"(?P<tz>Z|[+-]\d{2}:?\d{2}|[+-]\d{2}(?!\d))?"
_STAMP_SHAPES = (
    re.compile(r"(?<!\d)(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})[T ]" + _TIME + _TZ),
    re.compile(r"(?<!\d)(?P<y>\d{4})/(?P<mo>\d{2})/(?P<d>\d{2})[T ]" + _TIME),
    re.compile(
        r"(?<!\d)(?P<d>\d{2})/" + _MON + r"/(?P<y>\d{4}):" + _TIME + r"(?: (?P<tz>[+-]\d{4}))?"
    ),
    re.compile(r"\b" + _MON + r" {1,2}(?P<d>\d{1,2}) " + _TIME + r"(?: (?P<y>\d{4})\b)?"),
    re.compile(r"^[IWEF](?P<mo>\d{2})(?P<d>\d{2}) " + _TIME),
    re.compile(r"(?<![\d-])(?P<mo>\d{2})-(?P<d>\d{2}) " + _TIME),
)
# A clock time alone counts only at the start of a line, or after one leading word
# ("INFO 02:00:01 ..."), so "meet at 12:30" in a message is not taken for a timestamp.
_BARE_TIME = re.compile(r"^\W{0,3}(?:[A-Za-z]{1,8}\W{1,4})?" + _TIME + r"(?![\d:])")


@dataclass(frozen=True, slots=True)
class Stamp:
    """A timestamp as a line gives it: the date parts it has, the clock time, the offset."""

    year: int | None
    month: int | None
    day: int | None
    tod: float  # seconds since midnight
    tz: tzinfo | None
    end: int  # where the timestamp ends in the line


def _tod(m: re.Match[str]) -> float | None:
    h, mi = int(m.group("H")), int(m.group("M"))
    s = min(int(m.group("S") or 0), 59)  # a leap second counts as :59
    if h > 23 or mi > 59:
        return None
    frac = m.group("F")
    return h * 3600 + mi * 60 + s + (int(frac) / 10 ** len(frac) if frac else 0.0)


def _offset(text: str | None) -> tzinfo | None:
    if not text:
        return None
    if text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    if hours > 23 or minutes > 59:
        return None
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def parse_stamp(line: str) -> Stamp | None:
    head = line[:_HEAD]
    for shape in _STAMP_SHAPES:
        m = shape.search(head)
        if not m:
            continue
        tod = _tod(m)
        groups = m.groupdict()
        month = _MONTHS[groups["mon"].lower()] if groups.get("mon") else groups.get("mo")
        month = int(month) if month is not None else None
        day = int(groups["d"])
        if tod is None or not (month and 1 <= month <= 12) or not 1 <= day <= 31:
            continue
        year = int(groups["y"]) if groups.get("y") else None
        return Stamp(year, month, day, tod, _offset(groups.get("tz")), m.end())
    m = _BARE_TIME.match(line)
    if m:
        tod = _tod(m)
        if tod is not None:
            return Stamp(None, None, None, tod, None, m.end())
    return None


# -- the window -----------------------------------------------------------------------

_TOD_WINDOW = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,6}))?)?")
_ISO_PRECISION = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ](\d{2})(?::(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?)?"
)


@dataclass(frozen=True, slots=True)
class Bound:
    at: float | datetime  # seconds since midnight, or a datetime
    # ``at`` plus the precision it was written with: an end bound keeps what is before it.
    until: float | datetime

    @property
    def time_of_day(self) -> bool:
        return isinstance(self.at, float)


def parse_bound(text: str, field: str) -> Bound:
    s = text.strip()
    m = _TOD_WINDOW.fullmatch(s)
    if m:
        h, mi, sec, frac = m.groups()
        if int(h) > 23 or int(mi) > 59 or int(sec or 0) > 59:
            raise JobRejected(field, f"{text!r} is not a time of day")
        at = int(h) * 3600 + int(mi) * 60 + int(sec or 0)
        at += int(frac) / 10 ** len(frac) if frac else 0
        step = 60.0 if sec is None else (1.0 if frac is None else 10.0 ** -len(frac))
        return Bound(float(at), float(at + step))
    try:
        at_dt = datetime.fromisoformat(s)
    except ValueError:
        raise JobRejected(
            field,
            f"{text!r} is neither a time of day (HH:MM[:SS]) nor an ISO 8601 date or datetime",
        ) from None
    p = _ISO_PRECISION.match(s)
    parts = p.groups() if p else (None, None, None, None)
    if parts[0] is None:
        step = timedelta(days=1)
    elif parts[1] is None:
        step = timedelta(hours=1)
    elif parts[2] is None:
        step = timedelta(minutes=1)
    elif parts[3] is None:
        step = timedelta(seconds=1)
    else:
        step = timedelta(microseconds=max(1, 10 ** (6 - min(len(parts[3]), 6))))
    try:
        until = at_dt + step
    except OverflowError:  # the last day of year 9999
        until = datetime.max.replace(tzinfo=at_dt.tzinfo)
    return Bound(at_dt, until)


@dataclass(frozen=True, slots=True)
class Window:
    start: Bound | None
    end: Bound | None

    @property
    def time_of_day(self) -> bool:
        b = self.start or self.end
        return b is not None and b.time_of_day

    @property
    def reference(self) -> datetime | None:
        b = self.start or self.end
        return b.at if b is not None and isinstance(b.at, datetime) else None

    @property
    def tz(self) -> tzinfo | None:
        ref = self.reference
        return ref.tzinfo if ref else None

    def contains_tod(self, tod: float) -> bool:
        lo = self.start.at if self.start else None
        hi = self.end.until if self.end else None
        if lo is not None and hi is not None and lo >= hi:  # wraps midnight
            return tod >= lo or tod < hi  # type: ignore[operator]
        return (lo is None or tod >= lo) and (hi is None or tod < hi)

    def contains_dt(self, at: datetime) -> bool:
        if self.start and at < self.start.at:  # type: ignore[operator]
            return False
        return not (self.end and at >= self.end.until)  # type: ignore[operator]


def parse_window(start: str | None, end: str | None) -> Window:
    lo = parse_bound(start, "input.start") if start is not None else None
    hi = parse_bound(end, "input.end") if end is not None else None
    if lo and hi:
        if lo.time_of_day != hi.time_of_day:
            raise JobRejected(
                "input.end", "start and end must both be times of day or both be dates/datetimes"
            )
        if not lo.time_of_day:
            a, b = lo.at, hi.at
            assert isinstance(a, datetime) and isinstance(b, datetime)
            if (a.tzinfo is None) != (b.tzinfo is None):
                raise JobRejected(
                    "input.end", "give a UTC offset on both start and end, or neither"
                )
            if hi.until <= a:  # type: ignore[operator]
                raise JobRejected("input.end", f"{end!r} is before start {start!r}")
    return Window(lo, hi)


# -- the job --------------------------------------------------------------------------


class LogSliceInput(RuleInput):
    text: StrictStr
    levels: list[StrictStr] | None = Field(default=None, min_length=1)
    start: StrictStr | None = None
    end: StrictStr | None = None
    pattern: StrictStr | None = Field(default=None, min_length=1)
    flags: list[StrictStr] = Field(default_factory=list)
    max_lines: StrictInt = Field(default=200, ge=1, le=MAX_LINES)
    keep: Literal["first", "last"] = "first"


def _levels(inp: LogSliceInput) -> frozenset[str] | None:
    if inp.levels is None:
        return None
    out = set()
    for i, name in enumerate(inp.levels):
        lvl = canonical_level(name)
        if lvl is None:
            raise JobRejected(
                f"input.levels[{i}]", f"unknown level {name!r}; use one of {', '.join(LEVELS)}"
            )
        out.add(lvl)
    return frozenset(out)


def check(inp: LogSliceInput, limits: LimitsConfig) -> None:
    _levels(inp)
    parse_window(inp.start, inp.end)
    flags = parse_flags(inp.flags, "input.flags")
    if inp.pattern is not None:
        compile_pattern(inp.pattern, flags, "input.pattern", limits)
    elif inp.flags:
        raise JobRejected("input.flags", "flags apply to a pattern; give one or drop the flags")


def _line_time(stamp: Stamp, window: Window, last_date: tuple[int, int, int] | None) -> datetime:
    ref = window.reference
    assert ref is not None
    if stamp.month is not None and stamp.day is not None:
        year = stamp.year if stamp.year is not None else (last_date[0] if last_date else ref.year)
        y, mo, d = year, stamp.month, stamp.day
    elif last_date:
        y, mo, d = last_date
    else:
        y, mo, d = ref.year, ref.month, ref.day
    at = datetime(y, mo, d) + timedelta(seconds=stamp.tod)
    if window.tz is not None:
        return at.replace(tzinfo=stamp.tz or window.tz)
    return at


def run(inp: LogSliceInput, config: FleetConfig) -> dict[str, Any]:
    limits = config.limits
    levels = _levels(inp)
    window = parse_window(inp.start, inp.end)
    timed = window.start is not None or window.end is not None
    compiled: regex.Pattern[str] | None = None
    if inp.pattern is not None:
        compiled = compile_pattern(
            inp.pattern, parse_flags(inp.flags, "input.flags"), "input.pattern", limits
        )
    budget = RegexBudget(limits.regex_timeout_s)

    # keep="last" holds a rolling tail; keep="first" simply stops adding.
    kept: deque[str] = deque(maxlen=inp.max_lines if inp.keep == "last" else None)
    total = 0
    in_window = False  # the verdict of the last timestamp seen
    level: str | None = None
    last_date: tuple[int, int, int] | None = None
    has_stamp = False
    # Levels are read only to filter on them; timestamps for the window, or to tell
    # an entry from its continuation lines when filtering on levels.
    need_level = levels is not None
    need_stamp = timed or need_level
    for line in inp.text.splitlines():
        stamp = parse_stamp(line) if need_stamp else None
        own_level = detect_level(line, stamp.end if stamp else None) if need_level else None
        if stamp is not None:
            has_stamp = True
            if timed:
                if window.time_of_day:
                    in_window = window.contains_tod(stamp.tod)
                else:
                    try:
                        at = _line_time(stamp, window, last_date)
                    except ValueError:  # e.g. Feb 30: not a date, so not in the window
                        in_window = False
                    else:
                        in_window = window.contains_dt(at)
                        last_date = (at.year, at.month, at.day)
            level = own_level
        elif own_level is not None:
            level = own_level
        # else: a continuation line, keeping the entry's timestamp and level.
        if timed and not (has_stamp and in_window):
            continue
        if levels is not None and level not in levels:
            continue
        if compiled is not None:
            try:
                if budget.search(compiled, line) is None:
                    continue
            except TimeoutError as exc:
                raise RuleFailed(f"pattern timed out after {limits.regex_timeout_s:g}s") from exc
        total += 1
        if inp.keep == "last" or len(kept) < inp.max_lines:
            kept.append(line)
    count = len(kept)
    return {"lines": list(kept), "count": count, "total": total, "truncated": total > count}
