"""The ledger in a real database: one writer drains the Redis record stream into SQL.

Workers append each record to the stream ``P:ledger:log`` in the same transaction
as the record itself (:class:`~tierfleet.ledger.Ledger`). :class:`SqlLedgerWriter`
(``tierfleet ledger-writer``, or a thread in each worker when ``ledger.url`` is set;
a Redis lock lets one run at a time) reads the stream from its own cursor, inserts a
batch in one SQL transaction, *then* moves its cursor. Inserts are keyed by
``(job_id, attempt, call)`` and ignore a key already there, so a writer killed
between the commit and the cursor update writes the batch again harmlessly: every
record lands exactly once. The stream is trimmed only below every reader's cursor
(this one and the JSONL export's).

SQLite (a file, nothing to install) or PostgreSQL (``postgresql+psycopg://...``)
through SQLAlchemy Core. Reports read :meth:`SqlLedger.raw_between` (the same record
dicts Redis gives, so the same figures) or :meth:`SqlLedger.totals` (GROUP BY in SQL).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import redis
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from . import keys
from .config import FleetConfig
from .ledger import Totals, is_job_final, trim_ledger_stream
from .pricing import to_nanos

__all__ = ["SqlLedger", "SqlLedgerWriter", "records_table", "sql_url", "trim_ledger_stream"]

log = logging.getLogger(__name__)

metadata = MetaData()
records_table = Table(
    "ledger_records", metadata,
    Column("job_id", String(128), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("call", String(64), primary_key=True),  # '' for records with no host call
    Column("ts", Float, nullable=False, index=True),
    Column("day", String(10), nullable=False),
    Column("workflow", String(128), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("tier", String(64), nullable=False),
    Column("host", String(128)),
    Column("model", String(128)),
    Column("outcome", String(32), nullable=False),
    Column("tokens_in", BigInteger, nullable=False),
    Column("tokens_out", BigInteger, nullable=False),
    Column("cost_nusd", BigInteger, nullable=False),
    Column("baseline_nusd", BigInteger, nullable=False),
    Column("latency_s", Float, nullable=False),
    Column("job_final", Boolean, nullable=False),
    Column("rec", Text, nullable=False),  # the record as Redis held it: reports read it back
)
# Columns GROUP BY may use (the same dimensions as Ledger.totals).
_DIMS = ("workflow", "tier", "model", "kind")


def sql_url(config: FleetConfig) -> str | None:
    return config.ledger.url


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # WAL lets report readers run while the writer commits.
        eng = create_engine(url)
        with eng.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        return eng
    return create_engine(url, pool_pre_ping=True)


def _row(rec: dict[str, Any], line: str, day: str) -> dict[str, Any]:
    return {
        "job_id": rec["job_id"], "attempt": int(rec["attempt"]), "call": rec.get("call") or "",
        "ts": float(rec["ts"]), "day": day, "workflow": rec["workflow"], "kind": rec["kind"],
        "tier": rec["tier"], "host": rec.get("host"), "model": rec.get("model"),
        "outcome": rec["outcome"], "tokens_in": int(rec["tokens_in"]), "tokens_out": int(rec["tokens_out"]),
        "cost_nusd": to_nanos(rec["cost_usd"]), "baseline_nusd": to_nanos(rec["baseline_cost_usd"]),
        "latency_s": float(rec["latency_s"]), "job_final": is_job_final(rec), "rec": line,
    }


class SqlLedger:
    """The ledger table: idempotent batch inserts and the reads reports need."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _engine(url)
        metadata.create_all(self.engine)

    def _insert(self) -> Any:
        dialect = self.engine.dialect.name
        ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(records_table)
        return ins.on_conflict_do_nothing(index_elements=["job_id", "attempt", "call"])

    def insert(self, rows: list[dict[str, Any]]) -> None:
        """Insert in one transaction; a key already there is left as it is (records never change)."""
        if rows:
            with self.engine.begin() as conn:
                conn.execute(self._insert(), rows)

    def add_records(self, recs: list[dict[str, Any]]) -> None:
        self.insert([_row(r, json.dumps(r, separators=(",", ":"), sort_keys=True),
                          _day(r["ts"])) for r in recs])

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(records_table)).scalar_one())

    def keys(self) -> list[tuple[str, int, str]]:
        t = records_table
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(select(t.c.job_id, t.c.attempt, t.c.call))]  # type: ignore[misc]

    def iter_records(self, start: float = 0.0, end: float = float("inf"),
                     chunk: int = 50_000) -> Iterator[dict[str, Any]]:
        t = records_table
        q = select(t.c.rec).where(t.c.ts > start)
        if end != float("inf"):
            q = q.where(t.c.ts <= end)
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=chunk).execute(q.order_by(t.c.ts))
            for (line,) in result:
                yield json.loads(line)

    def raw_between(self, start: float, end: float) -> list[dict[str, Any]]:
        """Record dicts with ``start < ts <= end``, as :meth:`Ledger.raw_between` gives them."""
        return list(self.iter_records(start, end))

    def totals(self, start: float, end: float, by: str = "total") -> dict[str, Totals]:
        """Counters per value of ``by``, summed by the database (for very large ledgers)."""
        t = records_table
        group = [t.c[by]] if by in _DIMS else []
        cols = [
            func.count().label("attempts"),
            func.sum(func.cast(t.c.job_final, Integer)).label("jobs"),
            func.sum(t.c.tokens_in).label("tokens_in"), func.sum(t.c.tokens_out).label("tokens_out"),
            func.sum(t.c.cost_nusd).label("cost_nusd"), func.sum(t.c.baseline_nusd).label("baseline_nusd"),
        ]
        q = select(*group, *cols).where(t.c.ts > start, t.c.ts <= end)
        if group:
            q = q.group_by(*group)
        out: dict[str, Totals] = {}
        with self.engine.connect() as conn:
            for r in conn.execute(q):
                m = r._mapping
                key = str(m[by] or "-") if group else "all"
                out[key] = Totals(**{k: int(m[k] or 0) for k in
                                     ("attempts", "jobs", "tokens_in", "tokens_out", "cost_nusd",
                                      "baseline_nusd")})
        return out


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _day(ts: float) -> str:
    from .ledger import day_of

    return day_of(float(ts))


class SqlLedgerWriter:
    """Moves the ledger stream into SQL in batches, one writer at a time (a Redis lock)."""

    def __init__(self, client: redis.Redis, config: FleetConfig, url: str | None = None) -> None:
        self.redis = client
        self.config = config
        url = url or config.ledger.url
        if not url:
            raise ValueError("ledger.url is not set: no database to write the ledger to")
        self.sql = SqlLedger(url)
        self.stream = keys.ledger_log(config)
        self.cursor_key = keys.key(config, "ledger", "sql", "cursor")
        self.lock_key = keys.key(config, "ledger", "sql", "lock")

    def drain(self, batch: int = 1000, *, max_batches: int | None = None) -> int:
        """Write what the stream holds now; returns the number of records handed to SQL."""
        if not self.redis.set(self.lock_key, str(os.getpid()), nx=True, ex=120):
            return 0
        written = 0
        try:
            done = 0
            while max_batches is None or done < max_batches:
                raw = self.redis.get(self.cursor_key)
                cursor = (raw.decode() if isinstance(raw, bytes) else raw) or "0-0"
                entries = self.redis.xrange(self.stream, min=f"({cursor}", count=batch)
                if not entries:
                    break
                rows = []
                for _, fields in entries:
                    f = {_s(k): _s(v) for k, v in fields.items()}
                    rows.append(_row(json.loads(f["rec"]), f["rec"], f["day"]))
                self.sql.insert(rows)  # committed before the cursor moves: a crash re-inserts, ignored
                last = entries[-1][0]
                self.redis.set(self.cursor_key, last.decode() if isinstance(last, bytes) else last)
                written += len(entries)
                done += 1
                self.redis.expire(self.lock_key, 120)
        finally:
            self.redis.delete(self.lock_key)
        trim_ledger_stream(self.redis, self.config)
        return written

    def run_forever(self, stop: Any, interval: float = 1.0) -> None:
        while not stop.is_set():
            try:
                self.drain()
            except redis.RedisError as exc:
                log.warning("ledger writer: redis unavailable (%s); retrying", exc)
            except Exception:
                # The records stay in the stream; the next round tries again.
                log.exception("ledger writer: could not write to %s; retrying", self.sql.engine.url)
            stop.wait(interval)

