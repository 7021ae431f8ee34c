"""The job life cycle as a state machine, attacked step by step (hypothesis, in process).

States: pending (admitted), queued (a message on a tier's list), running (popped into
``unacked``), moved (published to another tier), parked, dead, final. The machine
submits jobs (the same id twice, sometimes with another body), delivers them,
kills "workers" at the worst moments (after kombu's pop but before its ``unacked``
write; holding a delivery; right after a host answered, before the record; right
after the record; after a move is kept, before its publish), blinks
Redis right after a host answered (the worker lives on and runs the delivery again
once Redis answers, as ``worker.run_job`` does), takes hosts down and up, and runs
the reaper's sweeps, in any order hypothesis finds.

After every step: every admitted job is final or open with a kept delivery, and no
confidential job has reached a rented or paid host. At the end, with the hosts back
and the sweeps run, every job is final (lost 0, stuck 0), no attempt of a job has two
answers billed (two ``ok``/``escalated`` records), and the ledger holds one
record per host call the hosts received, as soon as the jobs are final and the reaper
has had its sweep: a call of a worker that still lives is not left to the in-flight
notes' deadline (the task time limit).

The broker is kombu's own Redis layout written by hand (a list per tier, ``unacked``
and its index), so the reaper's repair sweep reads exactly what it reads in a fleet.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.conftest import BUILTIN_CONFIG
from tierfleet import dispatch, keys
from tierfleet.backends.base import Completion, CompletionRequest, HostDown, HostHealth
from tierfleet.config import FleetConfig
from tierfleet.dispatch import Dispatcher
from tierfleet.envelope import Delivery
from tierfleet.errors import JobRejected
from tierfleet.jobs import TERMINAL, Status
from tierfleet.ledger import Ledger
from tierfleet.reaper import Reaper
from tierfleet.runner import REDIS_BLINKS, Runner
from tierfleet.store import OpenJobs, ResultStore

LOCAL = {"rules", "local-mac", "local-gpu"}


class WorkerDied(BaseException):
    """The worker process is gone (SIGKILL): nothing after this line runs."""


class Host:
    """A model host that can be down, or answer and then see its worker die."""

    def __init__(self, name: str, server: fakeredis.FakeServer) -> None:
        self.name = name
        self.server = server
        self.up = True
        self.kill_after_answer = False
        self.blink_after_answer = False
        self.blink_on_refuse = False
        self.poor_once = False  # the next answer is empty: the worker escalates the job
        self.calls: list[CompletionRequest] = []

    def complete(self, request: CompletionRequest) -> Completion:
        if self.blink_on_refuse:
            # Healthy a moment ago, refusing now; and Redis goes as the refusal comes back.
            self.blink_on_refuse = False
            self.server.connected = False
            err = HostDown(self.name, "connection refused")
            err.reached = False
            raise err
        if not self.up:
            err = HostDown(self.name, "connection refused")
            err.reached = False  # a refused connection reaches nobody: nothing to bill
            raise err
        self.calls.append(request)
        if self.kill_after_answer:
            self.kill_after_answer = False
            raise WorkerDied
        if self.blink_after_answer:
            self.blink_after_answer = False
            self.server.connected = False  # Redis is gone while the answer travels back
        text = "" if self.poor_once else f"answer from {self.name}"
        self.poor_once = False
        return Completion(text=text, model=request.model, host=self.name,
                          tokens_in=10, tokens_out=5, latency_s=0.01, finish_reason="stop")

    def health(self) -> HostHealth:
        return HostHealth(host=self.name, ok=self.up, detail="ok" if self.up else "down")


class Broker:
    """kombu's Redis transport layout: ``LPUSH`` on the tier's list, pop into ``unacked``."""

    def __init__(self, r: fakeredis.FakeRedis) -> None:
        self.r = r

    def publish(self, d: Delivery) -> None:
        msg = {"headers": {"id": d.job.id, "task": "tierfleet.run_job"}, "body": d.to_kwargs()}
        self.r.lpush(d.tier, json.dumps(msg))

    def pop(self, tier: str) -> tuple[str, dict[str, Any]] | None:
        raw = self.r.rpop(tier)
        if raw is None:
            return None
        tag = uuid.uuid4().hex
        self.r.hset(keys.UNACKED, tag, json.dumps([json.loads(raw), "", tier]))
        self.r.zadd(keys.UNACKED_INDEX, {tag: time.time()})
        return tag, json.loads(raw)

    def ack(self, tag: str) -> None:
        self.r.hdel(keys.UNACKED, tag)
        self.r.zrem(keys.UNACKED_INDEX, tag)

    def restore(self, tag: str) -> None:
        """What the reaper does for a dead node's delivery (kombu's restore_by_tag)."""
        raw = self.r.hget(keys.UNACKED, tag)
        if raw is not None:
            msg, _, tier = json.loads(raw)
            self.r.lpush(tier, json.dumps(msg))
        self.ack(tag)


class _Producer:
    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        yield


class _App:
    @contextlib.contextmanager
    def producer_or_acquire(self) -> Iterator[_Producer]:
        yield _Producer()


def _config() -> FleetConfig:
    from tierfleet.config import load_config

    cfg = load_config(BUILTIN_CONFIG)
    rel = cfg.reliability
    # Every wait short: the machine, not the clock, decides the order of events.
    for field, value in {"park_backoff_s": [0.0], "max_attempts": 3, "repair_after_s": 0.001,
                         "repair_every_s": 0.001, "breaker_open_s": 0.01, "breaker_failures": 1,
                         "health_cache_s": 0.0, "dead_after_s": 0.001}.items():
        setattr(rel, field, value)
    cfg.cache.enabled = False
    return cfg


CONFIG = _config()
KINDS = ("code", "summary", "keyword_route")


class JobLifeCycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.server = fakeredis.FakeServer()
        self.r = fakeredis.FakeRedis(server=self.server, decode_responses=True)
        self.broker = Broker(self.r)
        self.hosts = {name: Host(name, self.server) for name in CONFIG.hosts}
        self.runner = Runner(CONFIG, self.r, self._publish, backend_for=self.hosts.__getitem__)
        self.kill_after_record = False  # the next host call's record lands, then its worker dies
        self.kill_before_publish = False  # the next move is kept, then its worker dies
        record = self.runner.ledger.record

        def record_then_maybe_die(att: Any, **kw: Any) -> Any:
            out = record(att, **kw)
            if self.kill_after_record and att.call:
                self.kill_after_record = False
                raise WorkerDied
            return out

        self.runner.ledger.record = record_then_maybe_die  # type: ignore[method-assign]
        # A wait for Redis ends with Redis back (it was restarted meanwhile).
        self.runner._sleep = lambda s: self._redis_back()
        self.node = 0  # the worker node running deliveries; a new one after each kill
        self._beat()
        self._patch = pytest.MonkeyPatch()
        self._patch.setattr(dispatch, "send", lambda app, d, producer=None: self.broker.publish(d))
        self.dispatcher = Dispatcher(CONFIG, client=self.r, app=_App())  # type: ignore[arg-type]
        self.reaper = Reaper(CONFIG, self.r, app=None)  # type: ignore[arg-type]
        self.results = ResultStore(self.r, CONFIG)
        self.open = OpenJobs(self.r, CONFIG)
        self.jobs: dict[str, dict[str, Any]] = {}
        self.held: list[str] = []  # deliveries in unacked whose worker died
        self.n = 0

    def teardown(self) -> None:
        self._patch.undo()

    def _publish(self, d: Delivery) -> None:
        """The runner's publish (a job moving on): its worker may die just before it."""
        if self.kill_before_publish:
            self.kill_before_publish = False
            raise WorkerDied
        self.broker.publish(d)

    def _redis_back(self) -> None:
        self.server.connected = True

    def _owner(self) -> str:
        return f"node{self.node}|{os.getpid()}|1"

    def _beat(self) -> None:
        """The current node's heartbeat (no expiry here: the node beats while it lives)."""
        self.r.set(keys.heartbeat(CONFIG, f"node{self.node}"),
                   json.dumps({"node": f"node{self.node}", "pids": [os.getpid()], "tags": []}))

    def _node_died(self) -> None:
        self.r.delete(keys.heartbeat(CONFIG, f"node{self.node}"))
        self.node += 1  # systemd starts a new node
        self._beat()

    # -- producers -------------------------------------------------------------------

    @rule(kind=st.sampled_from(KINDS), confidential=st.booleans())
    def submit(self, kind: str, confidential: bool) -> None:
        self.n += 1
        job: dict[str, Any] = {"id": f"j{self.n}", "kind": kind,
                               "privacy": "confidential" if confidential else "internal"}
        if kind == "keyword_route":
            job["input"] = {"text": f"vpn ticket {self.n}"}
        else:
            job["prompt"] = f"{kind} task number {self.n}"
        self.dispatcher.submit(job)
        self.jobs[job["id"]] = job

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), same_body=st.booleans(), batch=st.booleans())
    def submit_again(self, data: st.DataObject, same_body: bool, batch: bool) -> None:
        job = dict(self.jobs[data.draw(st.sampled_from(sorted(self.jobs)))])
        depth_before = sum(self.r.llen(t) for t in CONFIG.tiers)
        if not same_body:
            if "prompt" in job:
                job["prompt"] += " (edited)"
            else:
                job["input"] = {"text": job["input"]["text"] + " (edited)"}
            with pytest.raises(JobRejected) as info:
                self.dispatcher.submit_many([job]) if batch else self.dispatcher.submit(job)
            assert info.value.field == "id"
        elif batch:
            self.dispatcher.submit_many([job, job])
        else:
            self.dispatcher.submit(job)
        # The same job again is never a second message.
        assert sum(self.r.llen(t) for t in CONFIG.tiers) == depth_before

    # -- workers ---------------------------------------------------------------------

    def _run(self, tier: str) -> None:
        got = self.broker.pop(tier)
        if got is None:
            return
        tag, msg = got
        while True:
            try:
                self.runner.run(Delivery.from_kwargs(msg["body"]), owner=self._owner())
            except WorkerDied:
                self.held.append(tag)  # dead with the delivery unacknowledged
                self._node_died()
                return
            except REDIS_BLINKS:
                # worker.run_job: hold the delivery, run it again once Redis answers.
                self._redis_back()
                continue
            break
        self.broker.ack(tag)

    @rule(tier=st.sampled_from(sorted(CONFIG.tiers)))
    def deliver(self, tier: str) -> None:
        self._run(tier)

    def deliver_on_every_tier(self) -> None:
        for tier in sorted(CONFIG.tiers):
            self._run(tier)

    def host_calls(self) -> int:
        return sum(len(h.calls) for h in self.hosts.values())

    @rule(tier=st.sampled_from(sorted(CONFIG.tiers)))
    def killed_between_pop_and_unacked(self, tier: str) -> None:
        self.r.rpop(tier)  # kombu's BRPOP took it; the process died before HSET unacked

    @rule(tier=st.sampled_from(sorted(CONFIG.tiers)))
    def killed_holding_a_delivery(self, tier: str) -> None:
        got = self.broker.pop(tier)
        if got is not None:
            self.held.append(got[0])

    @rule(host=st.sampled_from(sorted(CONFIG.hosts)))
    def killed_right_after_the_host_answered(self, host: str) -> None:
        self.hosts[host].kill_after_answer = True

    @rule()
    def killed_right_after_the_record(self) -> None:
        self.kill_after_record = True

    @rule()
    def killed_as_a_move_is_published(self) -> None:
        self.kill_before_publish = True

    @rule(host=st.sampled_from(sorted(CONFIG.hosts)))
    def redis_blinks_right_after_the_host_answered(self, host: str) -> None:
        self.hosts[host].blink_after_answer = True

    @rule(host=st.sampled_from(sorted(CONFIG.hosts)))
    def host_refuses_as_redis_blinks(self, host: str) -> None:
        self.hosts[host].blink_on_refuse = True

    @rule(host=st.sampled_from(sorted(CONFIG.hosts)))
    def host_answers_poorly_once(self, host: str) -> None:
        self.hosts[host].poor_once = True

    @rule(host=st.sampled_from(sorted(CONFIG.hosts)), up=st.booleans())
    def host_up_or_down(self, host: str, up: bool) -> None:
        self.hosts[host].up = up

    # -- the reaper ------------------------------------------------------------------

    @precondition(lambda self: self.held)
    @rule()
    def dead_node_restored(self) -> None:
        for tag in self.held:
            self.broker.restore(tag)
        self.held.clear()

    @rule()
    def sweep(self) -> None:
        self.reaper.unpark_due(self.broker.publish)
        self.reaper.repair(self.broker.publish, now=time.time() + 1)

    # -- what must hold after every step ---------------------------------------------

    @invariant()
    def every_job_is_final_or_open_with_its_delivery(self) -> None:
        ids = sorted(self.jobs)
        if not ids:
            return
        open_ids = set(self.r.zrange(self.open.index, 0, -1))
        bodies = set(self.r.hkeys(self.open.bodies))
        for job_id, res in zip(ids, self.results.get_many(ids), strict=True):
            assert res is not None, f"{job_id}: admitted but no record"
            if res.status in TERMINAL:
                assert job_id not in open_ids, f"{job_id}: final but still open"
            else:
                assert job_id in open_ids and job_id in bodies, f"{job_id}: {res.status} and not open"

    @invariant()
    def confidential_words_stay_local(self) -> None:
        for name, host in self.hosts.items():
            if CONFIG.hosts[name].tier not in LOCAL:
                for req in host.calls:
                    job = self.jobs[req.job_id]
                    assert job["privacy"] != "confidential", (name, req.job_id)

    def converge(self) -> None:
        """Hosts back, dead nodes restored, queues drained and sweeps run until quiet."""
        for h in self.hosts.values():
            h.up, h.kill_after_answer, h.blink_after_answer = True, False, False
            h.blink_on_refuse = h.poor_once = False
        self.kill_after_record = self.kill_before_publish = False
        for step in range(60):
            self.dead_node_restored() if self.held else None
            for tier in CONFIG.tiers:
                while self.r.llen(tier):
                    self._run(tier)
            self.reaper.unpark_due(self.broker.publish)
            self.reaper.repair(self.broker.publish, now=time.time() + 2 * step + 1)
            statuses = [r.status for r in self.results.get_many(sorted(self.jobs)) if r]
            if all(s in TERMINAL for s in statuses) and not any(
                    self.r.llen(t) for t in CONFIG.tiers):
                break
        ids = sorted(self.jobs)
        final = [r for r in self.results.get_many(ids) if r is not None and r.status in TERMINAL]
        lost = len(ids) - len(final)
        assert lost == 0, f"lost {lost} of {len(ids)}: " + str(
            [(r.job_id, r.status) for r in self.results.get_many(ids) if r and r.status not in TERMINAL])
        assert self.open.count() == 0, "stuck: open with no message and nothing to bring it back"
        ledger = Ledger(self.r, CONFIG)
        # One sweep, well before any in-flight note's deadline: the calls of dead workers
        # are settled now; a live worker's calls must already be in the ledger.
        self.reaper.inflight.settle(ledger, now=time.time() + 1)
        left = self.r.hgetall(keys.inflight(CONFIG))
        assert not left, f"host calls of live workers never recorded: {left}"
        answers: dict[tuple[str, int], int] = {}
        for i in ids:
            for a in ledger.job_attempts(i):
                if a.outcome in ("ok", "escalated", "cached"):
                    answers[(i, a.attempt)] = answers.get((i, a.attempt), 0) + 1
        twice = {k: n for k, n in answers.items() if n > 1}
        assert not twice, f"an attempt billed for two answers (its job ran again): {twice}"
        calls = sum(len(h.calls) for h in self.hosts.values())
        recorded = sum(1 for i in ids for a in ledger.job_attempts(i) if a.host and a.outcome != "cached")
        assert calls == recorded, f"hosts saw {calls} calls, the ledger holds {recorded}"
        dead = [r for r in final if r.status is Status.DEAD]
        assert all(r.error for r in dead), "a dead letter says why"


class ConvergingLifeCycle(JobLifeCycle):
    def teardown(self) -> None:
        try:
            self.converge()
        finally:
            super().teardown()


ConvergingLifeCycle.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_job_life_cycle = ConvergingLifeCycle.TestCase


def test_a_redis_blink_right_after_the_host_answered_is_billed_at_once_and_not_called_again() -> None:
    """The window the machine above finds only now and then, every time: Redis goes away
    while a host's answer travels back, and the worker lives on. The call is recorded as
    soon as Redis answers again (not left as an in-flight note until its deadline, the
    task time limit later), and the host is not called a second time for the same job."""
    machine = JobLifeCycle()
    try:
        machine.submit("summary", False)
        for host in CONFIG.hosts:
            machine.redis_blinks_right_after_the_host_answered(host)
        machine.deliver_on_every_tier()
        assert machine.host_calls() == 1
        machine.converge()
    finally:
        machine.teardown()


def test_a_redis_blink_as_a_refused_call_comes_back_leaves_no_call_to_bill() -> None:
    """A call that never reached its host is forgotten even over a Redis blink: a note
    left behind would be settled by the reaper as a lost call, billed and never made."""
    machine = JobLifeCycle()
    try:
        for h in machine.hosts.values():
            h.blink_on_refuse = True
        machine.submit("summary", False)
        machine.deliver_on_every_tier()
        assert not machine.r.hgetall(keys.inflight(CONFIG)), "an unsent call is still noted"
        machine.converge()
    finally:
        machine.teardown()


def test_a_worker_killed_right_after_its_record_leaves_nothing_to_call_again() -> None:
    """The record of an answer and the job's result land together: the delivery that
    comes back from the dead node finds the job final and calls no host."""
    machine = JobLifeCycle()
    try:
        machine.submit("summary", False)
        machine.killed_right_after_the_record()
        machine.deliver_on_every_tier()
        assert machine.held, "the worker died holding the delivery"
        assert machine.results.get("j1").status is Status.SUCCEEDED
        machine.dead_node_restored()
        machine.deliver_on_every_tier()
        assert machine.host_calls() == 1
        machine.converge()
    finally:
        machine.teardown()


@pytest.mark.parametrize("why", ["escalated", "fallback"])
def test_a_worker_killed_as_it_moves_a_job_on_leaves_the_old_attempt_superseded(why: str) -> None:
    """Escalated (a poor answer) or fallen back (the host down), the job is kept as its
    next attempt before that is published. The worker dies in between: the old attempt
    comes back from the dead node and steps aside without a host call, and the repair
    sweep sends the kept next attempt, which finishes the job."""
    machine = JobLifeCycle()
    try:
        machine.submit("summary" if why == "escalated" else "code", False)
        first = machine.open.body("j1")
        host = next(h for h, hc in CONFIG.hosts.items() if hc.tier == first.tier)
        if why == "escalated":
            machine.host_answers_poorly_once(host)
        else:
            machine.host_up_or_down(host, False)
        machine.killed_as_a_move_is_published()
        machine.deliver(first.tier)
        assert machine.held, "the worker died holding the delivery"
        assert machine.open.body("j1").attempt == 2
        calls = machine.host_calls()
        machine.host_up_or_down(host, True)
        machine.dead_node_restored()
        machine.deliver(first.tier)  # attempt 1 again: superseded, no host call
        assert machine.host_calls() == calls
        machine.sweep()
        machine.sweep()
        machine.deliver_on_every_tier()
        assert machine.results.get("j1").status is Status.SUCCEEDED
        machine.converge()
    finally:
        machine.teardown()
