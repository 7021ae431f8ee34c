"""Class 6 of issue #11: a worker started by hand survives Redis restarts.

With celery 5.7 / kombu 5.7 a worker whose Redis connection drops while it holds
deliveries exited with ``Unrecoverable error: AttributeError("'NoneType' object has
no attribute 'hostname'")`` (cause and fix: ``tierfleet.kombu_fixes``). No supervisor
here: the workers are started once, as ``celery -A tierfleet.worker worker -Q TIER``,
and must still be running and consuming after every restart.

Counts: every job whose submit returned is in; each must end succeeded or failed
(lost 0), nothing may stay queued or unacked (stuck 0). Submits that raised during an
outage were refused to their producer, so nothing was promised for them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection, Queue

from tests.support.harness import ModelFleet, Worker
from tests.support.redis_procs import Producer, kill9_and_restart, wait_final
from tierfleet.lab.embedded import EmbeddedRedis

pytestmark = pytest.mark.integration

RESTARTS = 3


def _held_message(conn: Connection) -> tuple[object, object]:
    """A channel holding one delivered, unacknowledged message (in Redis's ``unacked``)."""
    ch = conn.channel()
    queue = Queue("blink-q", routing_key="blink-q")
    conn.Producer(ch).publish({"n": 1}, routing_key="blink-q", declare=[queue])
    msg = ch.basic_get("blink-q", no_ack=False)
    assert msg is not None
    return ch, msg


@pytest.mark.parametrize("transport", [None, "tierfleet-redis"])
def test_closing_a_channel_after_collect_detached_its_transport(
        redis_url: str, rclient: redis.Redis, transport: str | None) -> None:
    """The mechanism, deterministically: Connection.collect() sets transport.client to
    None (kombu/connection.py:429) and Celery 5.7 then closes a leftover channel, whose
    restore of its unacked messages needs a new pool from that client."""
    import tierfleet.kombu_fixes  # noqa: F401  (registers the tierfleet-redis alias)

    conn = Connection(redis_url, transport=transport)
    try:
        ch, _ = _held_message(conn)
        assert rclient.hlen("unacked") == 1
        conn._transport.client = None  # what collect() does before Celery's close()
        if transport is None:
            # Stock kombu 5.7.0: the error that killed workers. If this stops raising,
            # kombu fixed it upstream and tierfleet.kombu_fixes can go.
            with pytest.raises(AttributeError, match="hostname"):
                ch.close()
        else:
            ch.close()
            # The message went back to its queue, as kombu means a close to do.
            assert rclient.llen("blink-q") == 1 and rclient.hlen("unacked") == 0
    finally:
        conn._transport = None
        conn.release()


@pytest.mark.parametrize("transport", [None, "tierfleet-redis"])
def test_a_late_ack_on_a_closed_channel_still_reaches_redis(
        redis_url: str, rclient: redis.Redis, transport: str | None) -> None:
    """A job that finishes after the reconnect acks through the channel it came on."""
    import tierfleet.kombu_fixes  # noqa: F401

    conn = Connection(redis_url, transport=transport)
    try:
        ch, msg = _held_message(conn)
        ch.qos.restore_at_shutdown = False  # keep the delivery held across the close
        ch.close()  # the consumer's teardown on a connection error
        assert rclient.hlen("unacked") == 1
        if transport is None:  # stock kombu: the closed channel has no transport left
            with pytest.raises(AttributeError):
                msg.ack()
            return
        msg.ack()
        assert rclient.hlen("unacked") == 0 and rclient.llen("blink-q") == 0
    finally:
        conn.release()


def _batch(n: int) -> list[dict[str, Any]]:
    # Model jobs on a slowed host, so each worker holds deliveries when Redis dies (the
    # bug needs unacked messages to restore), plus rules jobs on a second tier.
    return [{"kind": "summary", "prompt": f"Summarize note {n}-{i}."} for i in range(3)] + [
        {"kind": "keyword_route", "input": {"text": f"vpn ticket {n}"}}]


def _finished(app: Any, workers: list[Worker]) -> list[int]:
    """Tasks each worker has finished so far, as it answers Celery's ``inspect stats``
    (-1: it did not answer, i.e. it is not consuming its control queue either)."""
    stats: dict[str, Any] = {}
    for _ in range(5):  # the broker may still be coming back
        try:
            stats = app.control.inspect(destination=[w.name for w in workers],
                                        timeout=3.0).stats() or {}
        except Exception:
            stats = {}
        if len(stats) == len(workers):
            break
        time.sleep(1.0)
    return [sum((stats.get(w.name) or {}).get("total", {}).values()) if w.name in stats else -1
            for w in workers]


def test_workers_started_by_hand_survive_redis_kill9_restarts(tmp_path: Path) -> None:
    # appendfsync always: a SIGKILLed server loses no acknowledged write, so any loss
    # here would be the fleet's, not Redis's (the everysec window is class 1c).
    server = EmbeddedRedis(appendonly=True).start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    workers: list[Worker] = []
    try:
        with ModelFleet(tmp_path, server.url, client) as fleet:
            fleet.sim.fault("sim-ollama", "slow", seconds=0.3)
            # Started by hand: not handed to the fleet's supervisor, nothing restarts them.
            workers = [Worker("local-mac", fleet.config_path, concurrency=2).start(client),
                       Worker("local-mac", fleet.config_path, concurrency=2).start(client),
                       Worker("rules", fleet.config_path).start(client)]
            d = fleet.dispatcher()
            producer = Producer(d.submit_many, _batch, pause_s=0.1)
            producer.start()
            acked_before_last = 0
            done_at_last: list[int] = []
            for _ in range(RESTARTS):
                time.sleep(2.0)
                kill9_and_restart(server, down_s=1.0)
                acked_before_last = len(producer.acked)
                done_at_last = _finished(d.app, workers)
                assert [w.proc.poll() for w in workers if w.proc] == [None] * len(workers), \
                    "a worker exited on the Redis restart"
            time.sleep(3.0)  # jobs submitted after the last restart, to a recovered fleet
            producer.stop()
            consumed_after = [n - m for n, m in zip(_finished(d.app, workers), done_at_last, strict=True)]
            ids = producer.acked
            after_last = len(ids) - acked_before_last

            out, not_final = wait_final(d.results.get_many, ids, timeout=90)
            stuck_queued = sum(client.llen(t) for t in fleet.config.tiers)
            stuck_unacked = client.hlen("unacked")
            lost = len(ids) - sum(out.values())
            logs = "\n".join(w.log() for w in workers)
            print(f"\n[redis kill -9 x{RESTARTS}] jobs in: {len(ids)} (after last restart: "
                  f"{after_last}; refused to producer: {producer.refused} "
                  f"{dict(producer.errors)})  jobs out: {sum(out.values())} {out}  "
                  f"lost: {lost}  stuck: {len(not_final)} (queued {stuck_queued}, unacked "
                  f"{stuck_unacked})  worker exits: "
                  f"{[w.proc.poll() for w in workers if w.proc]}  finished per worker after "
                  f"the last restart: {consumed_after}")
            if not_final:
                print(fleet.dump_logs())
                for w in workers:
                    print(f"--- {w.name}\n{w.log()[-4000:]}")
            assert "Unrecoverable error" not in logs
            assert all(w.proc is not None and w.proc.poll() is None for w in workers), \
                "every worker started by hand is still running"
            assert after_last > 0, "the producer got jobs in after the last restart"
            assert all(n > 0 for n in consumed_after), "every worker kept consuming"
            assert lost == 0, f"{lost} acknowledged job(s) lost"
            assert not not_final, f"{len(not_final)} job(s) stuck, first {not_final[:3]}"
            assert out.get("failed", 0) == 0
            assert stuck_queued == 0 and stuck_unacked == 0
    finally:
        for w in workers:
            w.stop()
        client.close()
        server.cleanup()
