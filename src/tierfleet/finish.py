"""One round trip to finish a job: its ledger record, the fleet metrics and its result.

A rules job used to end in four round trips after its first read (WATCH, HGETALL, the
ledger's ~35-command MULTI/EXEC, the result-save script); on a busy 2-core machine each
costs about a millisecond of context switches, more than the job itself. Here the
runner reads the job's stored result and its ledger hash in one pipeline
(:func:`peek`), the ledger plans its writes in Python as before (:meth:`Ledger.plan`,
the same code as :meth:`Ledger.record`), and one script applies them and saves the
result (``store._SAVE``, verbatim) — only if the job's ledger hash is still what was
read. Otherwise (another delivery recorded first) the caller takes the ordinary path,
so the guarantees are the ledger's and the store's own: billed once, first final wins.

The script names keys it was not passed in KEYS (the day's aggregates): fine on one
Redis or Sentinel, which is what tierfleet runs on; not on Redis Cluster.
"""

from __future__ import annotations

import hashlib
from typing import Any

import redis

from . import keys, metrics
from .broker import send_raw
from .config import FleetConfig
from .jobs import Result
from .ledger import Planned

_SCRIPT: str | None = None


def _script() -> str:
    global _SCRIPT
    if _SCRIPT is None:
        from .store import _SAVE  # the lead's save rules, not a copy of them

        _SCRIPT = (
            "local function save()\n" + _SAVE + "\nend\n"
            "if redis.call('HLEN', KEYS[4]) ~= tonumber(ARGV[5])"
            " or redis.call('HEXISTS', KEYS[4], ARGV[6]) == 1 then\n"
            "  return {'stale'}\n"
            "end\n"
            "local i = 8\n"
            "for _ = 1, tonumber(ARGV[7]) do\n"
            "  local n = tonumber(ARGV[i])\n"
            "  local cmd = {}\n"
            "  for j = 1, n do cmd[j] = ARGV[i + j] end\n"
            "  i = i + n + 1\n"
            "  if cmd[1] == 'EWMA' then\n"  # metrics' moving mean: a script cannot EVAL
            "    local old = tonumber(redis.call('HGET', cmd[2], cmd[3]))\n"
            "    local x = tonumber(cmd[4])\n"
            "    if old then x = old + tonumber(cmd[5]) * (x - old) end\n"
            "    redis.call('HSET', cmd[2], cmd[3], string.format('%.6f', x))\n"
            "  else\n"
            "    redis.call(unpack(cmd))\n"
            "  end\n"
            "end\n"
            "local kept = save()\n"
            "if kept then return {'kept', kept} end\n"
            "return {'saved'}\n"
        )
    return _SCRIPT


def peek(client: redis.Redis, config: FleetConfig, job_key: str,
         job_id: str) -> tuple[Result | None, dict[str, str]]:
    """The job's stored result and its ledger hash, in one round trip."""
    pipe = client.pipeline(transaction=False)
    pipe.get(keys.result(config, job_id))
    pipe.hgetall(job_key)
    raw, earlier = pipe.execute()
    stored = Result.model_validate_json(raw) if raw else None
    return stored, {_s(k): _s(v) for k, v in (earlier or {}).items()}


def _ops(commands: list[tuple[Any, ...]]) -> list[Any] | None:
    """The planned commands flattened for the script; None if one cannot run inside it."""
    out: list[Any] = []
    for c in commands:
        if c[0] == "EVAL":
            if c[1] != metrics._EWMA:
                return None
            c = ("EWMA", *c[3:])
        out.append(len(c))
        out.extend(c)
    return out


class Script:
    """The finishing script on one client: EVALSHA through ``broker.send_raw`` (redis-py's
    packer costs more than the script for ~200 small arguments), loaded on NOSCRIPT."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.sha = hashlib.sha1(_script().encode()).hexdigest()

    def __call__(self, keys: list[str], args: list[Any]) -> Any:
        cmd = ("EVALSHA", self.sha, len(keys), *keys, *args)
        try:
            return send_raw(self.client, [cmd])[0]
        except redis.exceptions.NoScriptError:
            self.client.script_load(_script())
            return send_raw(self.client, [cmd])[0]


def script(client: redis.Redis) -> Script:
    """The finishing script for ``client`` (keep it: one per Runner)."""
    return Script(client)


def finish(run_script: Any, config: FleetConfig, planned: Planned,
           result: Result) -> Result | None:
    """Apply ``planned`` and save ``result`` in one script. Returns what is stored (the
    result, or a final one already there), or None when the ledger hash moved or the
    plan cannot run in a script: then the caller records and saves the ordinary way."""
    ops = _ops(planned.commands)
    if ops is None:
        return None
    n = len(planned.commands)
    args = [result.model_dump_json(), config.reliability.result_expires_s,
            "1" if result.finished else "0", result.job_id, planned.earlier, planned.field, n, *ops]
    script_keys = [keys.result(config, result.job_id), keys.open_index(config),
                   keys.open_bodies(config), planned.job_key]
    reply = run_script(keys=script_keys, args=args)
    verdict = _s(reply[0])
    if verdict == "stale":
        return None
    if verdict == "kept":
        return Result.model_validate_json(_s(reply[1]))
    return result


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


__all__ = ["finish", "peek", "script"]
