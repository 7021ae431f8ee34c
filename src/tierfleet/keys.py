"""Every Redis key the fleet reads or writes, in one place.

``P`` is ``config.key_prefix`` (``tierfleet`` by default), so several fleets can
share one Redis. The tier queues themselves are plain lists named after the
tier, and kombu's ``unacked`` / ``unacked_index`` carry no prefix because the
Celery settings set ``global_keyprefix = ""``: the reaper must read exactly the
keys kombu writes.

=============================  ===========  =========================================
key                            type         owner (writer)
=============================  ===========  =========================================
P:result:{job_id}              string JSON  store.ResultStore
P:parked                       zset (due)   store.Parking
P:parked:msg                   hash         store.Parking (id -> parked entry)
P:dlq                          zset (time)  store.Parking (dead letters)
P:dlq:msg                      hash         store.Parking (id -> dead entry)
P:hb:{node}                    string JSON  heartbeats.write_heartbeat (expires)
P:external:{job_id}            string       runner.RedisExternalIds (Runpod job ids)
P:breaker:{host}[:probe]       hash         health.Breaker
P:breaker_opened:{host}        counter      health.Breaker
P:ledger:job|day|agg:...       see ledger   ledger.Ledger
P:cache:{privacy}:{digest}     string JSON  cache.AnswerCache
P:metrics:{name}               hash         metrics
P:stats:{name}                 counter      reaper (jobs restored from dead nodes)
P:reaper:lock                  string       reaper.Reaper (one sweeper at a time)
P:session:{session}            list         dispatch.Dispatcher (recent kinds)
P:svc                          hash         read by dispatch.Dispatcher (tier -> mean s)
unacked, unacked_index         hash, zset   kombu (deliveries not yet acknowledged)
=============================  ===========  =========================================
"""

from __future__ import annotations

from .config import FleetConfig

# kombu's Redis transport names; see the module docstring for why they carry no prefix.
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"


def key(config: FleetConfig, *parts: str) -> str:
    return ":".join((config.key_prefix, *parts))


def result(config: FleetConfig, job_id: str) -> str:
    return key(config, "result", job_id)


def parked_index(config: FleetConfig) -> str:
    return key(config, "parked")


def parked_bodies(config: FleetConfig) -> str:
    return key(config, "parked", "msg")


def dead_index(config: FleetConfig) -> str:
    return key(config, "dlq")


def dead_bodies(config: FleetConfig) -> str:
    return key(config, "dlq", "msg")


def heartbeat(config: FleetConfig, node: str) -> str:
    return key(config, "hb", node)


def external_id(config: FleetConfig, job_id: str) -> str:
    return key(config, "external", job_id)


def breaker(config: FleetConfig, host: str) -> str:
    return key(config, "breaker", host)


def breaker_opened(config: FleetConfig, host: str) -> str:
    return key(config, "breaker_opened", host)


def ledger_prefix(config: FleetConfig) -> str:
    return key(config, "ledger")


def cache_prefix(config: FleetConfig) -> str:
    """The prefix :func:`tierfleet.cache.cache_key` joins ``cache:...`` to."""
    return config.key_prefix


def metrics(config: FleetConfig, name: str) -> str:
    return key(config, "metrics", name)


def stats(config: FleetConfig, name: str) -> str:
    return key(config, "stats", name)


def reaper_lock(config: FleetConfig) -> str:
    return key(config, "reaper", "lock")


def session(config: FleetConfig, session_id: str) -> str:
    return key(config, "session", session_id)


def service_times(config: FleetConfig) -> str:
    return key(config, "svc")
