"""The event-stream relay on its own: what it does when the client is gone."""

from __future__ import annotations

import asyncio
import time
from typing import Any

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


def test_waiting_streams_hold_none_of_the_threads_other_requests_need(app: Any) -> None:
    """Twenty clients streaming jobs that wait in their queue (no worker here): they wait
    in the streams' own threads, and the server's pool stays free for every other request
    (before, sixty waiting streams slowed /healthz to seconds)."""
    import anyio.to_thread
    import httpx

    body = {"model": "tier:local-gpu", "stream": True, "tierfleet": {"wait_s": 3},
            "messages": [{"role": "user", "content": "summarize the week"}]}

    async def main() -> tuple[list[int], int]:
        limiter = anyio.to_thread.current_default_thread_limiter()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            async def one() -> int:
                return (await c.post("/v1/chat/completions", json=body, headers=AUTH,
                                     timeout=30)).status_code

            tasks = [asyncio.create_task(one()) for _ in range(20)]
            # Every job admitted (on a busy machine that takes a while), then a moment for
            # each request to reach its stream.
            for _ in range(500):
                if app.state.dispatcher.open.count() == 20:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            borrowed = []
            for _ in range(40):
                borrowed.append(int(limiter.borrowed_tokens))
                await asyncio.sleep(0.02)
            codes = await asyncio.gather(*tasks)
        return codes, max(borrowed)

    codes, most = asyncio.run(main())
    assert codes == [504] * 20  # each waited its 3 s and said so
    # A blocking read per stream in the server's pool would hold ~20 of its threads.
    assert most <= 8, f"{most} of the server's threads held by 20 waiting streams"
