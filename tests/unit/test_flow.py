"""Flow control: requests, tokens and concurrent calls per window, shared by every worker."""

from __future__ import annotations

import fakeredis
import pytest

from tierfleet.config import FleetConfig, FlowConfig
from tierfleet.flow import Flow, Slot


@pytest.fixture
def flow(core_config: FleetConfig, fake_redis: fakeredis.FakeRedis) -> Flow:
    core_config.flow = {
        "openai-account": FlowConfig(hosts=["openai"], requests_per_minute=3, tokens_per_minute=1000,
                                     window_s=10, safety=0),
        "runpod": FlowConfig(hosts=["runpod"], concurrency=2, window_s=60),
    }
    return Flow(fake_redis, core_config)


def test_requests_per_window_are_exact_and_the_wait_is_until_the_oldest_leaves(flow: Flow) -> None:
    for i in range(3):
        assert isinstance(flow.acquire("openai", f"c{i}", 10, hold_s=5, now=100 + i), Slot)
    assert flow.acquire("openai", "c3", 10, hold_s=5, now=103) == pytest.approx(7)  # c0 leaves at 110
    assert isinstance(flow.acquire("openai", "c3", 10, hold_s=5, now=110.01), Slot)


def test_tokens_per_window_count_the_estimate_then_the_reported_usage(flow: Flow) -> None:
    a = flow.acquire("openai", "a", 600, hold_s=5, now=100)
    assert isinstance(a, Slot)
    assert flow.acquire("openai", "b", 600, hold_s=5, now=101) == pytest.approx(9)
    flow.release(a, tokens=200)  # the host said it used 200: room for 600 more now
    assert isinstance(flow.acquire("openai", "b", 600, hold_s=5, now=101), Slot)
    # A job larger than the whole allowance runs alone once the window is empty.
    assert flow.acquire("openai", "huge", 5000, hold_s=5, now=102) == pytest.approx(9)
    assert isinstance(flow.acquire("openai", "huge", 5000, hold_s=5, now=111.5), Slot)


def test_concurrency_frees_on_release_or_at_the_callers_deadline(flow: Flow) -> None:
    one = flow.acquire("runpod", "1", 1, hold_s=30, now=100)
    assert isinstance(one, Slot) and isinstance(flow.acquire("runpod", "2", 1, hold_s=30, now=100), Slot)
    assert flow.acquire("runpod", "3", 1, hold_s=30, now=100) == pytest.approx(1.0)
    flow.release(one)
    assert isinstance(flow.acquire("runpod", "3", 1, hold_s=30, now=100), Slot)
    assert isinstance(flow.acquire("runpod", "4", 1, hold_s=30, now=131), Slot)  # the dead holders' expired


def test_a_retry_after_blocks_the_host_for_everyone_and_unlimited_hosts_pass(flow: Flow) -> None:
    import time
    assert isinstance(flow.acquire("ollama", "x", 10, hold_s=1), Slot)
    flow.block("ollama", time.time() + 30)
    wait = flow.acquire("ollama", "y", 10, hold_s=1)
    assert isinstance(wait, float) and 29 < wait <= 30


def test_a_flow_naming_an_unknown_host_is_a_config_error(core_config: FleetConfig) -> None:
    data = core_config.model_dump()
    data["flow"] = {"x": {"hosts": ["nope"], "requests_per_minute": 1}}
    with pytest.raises(ValueError, match=r"flow\.x\.hosts"):
        FleetConfig(**data)
