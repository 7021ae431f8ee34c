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
P:digest:{job_id}              string       store.OpenJobs (the job's body digest)
P:open                         zset (time)  store.OpenJobs (non-final jobs, last change)
P:open:body                    hash         store.OpenJobs (id -> latest delivery)
P:open:suspect                 hash         reaper.Reaper (id -> first seen with no message)
P:lease:{job_id}               string JSON  runner.Leases (who is calling a host now)
P:parked                       zset (due)   store.Parking
P:parked:msg                   hash         store.Parking (id -> parked entry)
P:dlq                          zset (time)  store.Parking (dead letters)
P:dlq:msg                      hash         store.Parking (id -> dead entry)
P:hb:{node}                    string JSON  heartbeats.write_heartbeat (expires)
P:external:{job_id}            string       runner.RedisExternalIds (Runpod job ids)
P:breaker:{host}[:probe]       hash         health.Breaker
P:breaker_opened:{host}        counter      health.Breaker
P:ledger:job|day|agg:...       see ledger   ledger.Ledger
P:ledger:inflight              hash         runner (host calls not yet recorded)
P:ledger:log                   stream       ledger.Ledger (records to export as JSONL)
P:ledger:log:cursor            string       ledger.LedgerExport (last exported id)
P:ledger:export:lock           string       ledger.LedgerExport (one exporter at a time)
P:cache:{privacy}:{digest}     string JSON  cache.AnswerCache
P:budget:conf                  hash         budgets.BudgetBook (run-time budget overrides)
P:budget:{name}:{period}       hash         budgets.BudgetBook (spent nanos, r:{hold})
P:flow:{name}:req|tok|conc     zset, hash   flow.Flow (calls in the window, tokens, busy)
P:flow:host:{host}:until       string       flow.Flow (a 429's Retry-After end)
P:ledger:sql:cursor|lock       string       ledger_sql.SqlLedgerWriter
P:metrics:{name}               hash         metrics
P:stats:{name}                 counter      reaper (jobs restored from dead nodes)
P:reaper:lock                  string       reaper.Reaper (one sweeper at a time)
P:session:{session}            list         dispatch.Dispatcher (recent kinds)
P:svc                          hash         read by dispatch.Dispatcher (tier -> mean s)
P:label:index                  zset (time)  labels.LabelStore (label id -> when)
P:label:body                   hash         labels.LabelStore (label id -> label JSON)
P:answered:{job_id}            string JSON  labels.AnswerNotes (who answered, the prompt)
P:memory:bad                   hash         labels.RedisMemoryStore (bad-small sketches)
P:shadow:{job_id}              string JSON  shadow.ShadowSampler (the small answer to judge)
P:shadow:spent:{day}           counter      shadow.ShadowSampler (estimated nanos spent)
P:policy:rollout               hash         policy.versions.Rollout (current, candidate, share)
P:policy:shadow:{version}      list JSON    policy.shadowlog.ShadowLog (capped, expires)
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


def replay_claim(config: FleetConfig, job_id: str) -> str:
    """Held while one ``dlq replay`` re-sends this dead letter (expires)."""
    return key(config, "dlq", "replaying", job_id)


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


def labels_index(config: FleetConfig) -> str:
    return key(config, "label", "index")


def labels_body(config: FleetConfig) -> str:
    return key(config, "label", "body")


def answered(config: FleetConfig, job_id: str) -> str:
    return key(config, "answered", job_id)


def bad_memory(config: FleetConfig) -> str:
    return key(config, "memory", "bad")


def shadow(config: FleetConfig, job_id: str) -> str:
    return key(config, "shadow", job_id)


def shadow_spent(config: FleetConfig, day: str) -> str:
    return key(config, "shadow", "spent", day)


def policy_rollout(config: FleetConfig) -> str:
    return key(config, "policy", "rollout")


def policy_shadow_log(config: FleetConfig, version: str) -> str:
    return key(config, "policy", "shadow", version)


def digest(config: FleetConfig, job_id: str) -> str:
    return key(config, "digest", job_id)


def open_index(config: FleetConfig) -> str:
    return key(config, "open")


def open_bodies(config: FleetConfig) -> str:
    return key(config, "open", "body")


def open_suspects(config: FleetConfig) -> str:
    return key(config, "open", "suspect")


def lease(config: FleetConfig, job_id: str) -> str:
    return key(config, "lease", job_id)


def inflight(config: FleetConfig) -> str:
    return key(config, "ledger", "inflight")


def ledger_log(config: FleetConfig) -> str:
    return key(config, "ledger", "log")


def ledger_log_cursor(config: FleetConfig) -> str:
    return key(config, "ledger", "log", "cursor")


def ledger_export_lock(config: FleetConfig) -> str:
    return key(config, "ledger", "export", "lock")


def queue_lists(config: FleetConfig) -> list[str]:
    """Every Redis list kombu keeps a tier's messages in: one per priority step.

    With ``queue_order_strategy = "priority"`` kombu files priority p under
    ``tier + "\\x06\\x16" + p`` for p in its steps (0 is the bare name).
    """
    return [t if p == 0 else f"{t}\x06\x16{p}" for t in config.tiers for p in (0, 3, 6, 9)]
