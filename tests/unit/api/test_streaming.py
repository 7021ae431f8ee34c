"""The event-stream relay on its own: what it does when the client is gone."""

from __future__ import annotations

import asyncio
import time

from fastapi.testclient import TestClient

from tests.unit.api.conftest import AUTH
from tierfleet.api import streaming
from tierfleet.api.errors import ApiError
from tierfleet.dispatch import Dispatcher
from tierfleet.jobs import Result


class HungUp:
    """A request whose client has disconnected."""

    async def is_disconnected(self) -> bool:
        return True


def _failure(res: Result) -> ApiError:
    return ApiError(502, f"job {res.job_id} failed")


def test_a_stream_whose_client_hung_up_before_the_first_token_stops(
        client: TestClient, dispatcher: Dispatcher) -> None:
    """A stream waiting on a queued job (local-gpu has no worker here) whose client left
    stops at once, instead of reading the job's Redis Stream until the wait runs out."""
    job_id = client.post("/v1/jobs", headers=AUTH, json={
        "kind": "summary", "prompt": "x", "tier": "local-gpu"}).json()["id"]

    async def relay() -> list[str]:
        events = streaming.relay(HungUp(), dispatcher, job_id,  # type: ignore[arg-type]
                                 model="m", limit_s=60, include_usage=False, failure=_failure)
        first, whole = await asyncio.wait_for(streaming.primed(events), timeout=10)
        assert first is None
        return [e async for e in whole]

    t0 = time.monotonic()
    assert asyncio.run(relay()) == []
    assert time.monotonic() - t0 < 5
