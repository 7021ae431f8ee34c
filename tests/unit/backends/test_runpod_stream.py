"""The Runpod client streaming from ``GET /stream/{id}`` over a scripted transport: each
piece reaches ``on_token`` when its poll brings it, the answer and counts come from the
job's ``/status`` output, and the job id is stored before the first poll, as without
streaming."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.unit.backends.conftest import MODELS, Backend, Wire, request_for
from tierfleet.backends import HostDown, MemoryExternalIds


def stream(status: str, *outputs: object) -> dict[str, object]:
    return {"id": "rp-9", "status": status, "stream": [{"output": o} for o in outputs]}


def test_pieces_reach_on_token_poll_by_poll(make_backend: Callable[..., Backend],
                                            wire: Wire) -> None:
    b = make_backend("runpod")
    ids = MemoryExternalIds()
    b.external_ids = ids  # type: ignore[union-attr]
    got: list[tuple[int, str]] = []  # (requests sent when the piece came, piece)
    wire.json(200, {"id": "rp-9", "status": "IN_QUEUE"})
    wire.json(200, stream("IN_QUEUE"))
    wire.json(200, stream("IN_PROGRESS", {"text": "Two "}, {"text": "failures"}))
    wire.json(200, stream("IN_PROGRESS"))
    wire.json(200, stream("IN_PROGRESS", {"text": [", then"]}, ", green"))  # vLLM's, a string
    wire.json(200, stream("COMPLETED"))
    wire.json(200, {"id": "rp-9", "status": "COMPLETED", "executionTime": 1500, "output": {
        "text": "Two failures, then green", "tokens_in": 11, "tokens_out": 5,
        "finish_reason": "stop", "model": MODELS["runpod"]}})

    def on_token(piece: str) -> None:
        assert ids.get("job-s") == "rp-9"  # stored before anything streamed
        got.append((len(wire.requests), piece))

    c = b.complete(request_for("runpod", job_id="job-s", on_token=on_token))
    assert got == [(3, "Two "), (3, "failures"), (5, ", then"), (5, ", green")]
    assert (c.text, c.tokens_in, c.tokens_out, c.finish_reason) == (
        "Two failures, then green", 11, 5, "stop")
    assert c.billed_seconds == 1.5 and c.external_id == "rp-9"
    urls = [str(r.url) for r in wire.requests]
    assert urls[0].endswith("/run") and urls[-1].endswith("/status/rp-9")
    assert all(u.endswith("/stream/rp-9") for u in urls[1:-1])


def test_an_aggregate_stream_output_is_joined(make_backend: Callable[..., Backend],
                                              wire: Wire) -> None:
    """A generator handler with ``return_aggregate_stream``: /status output is the list
    of pieces; the text is all of them, the counts those the last pieces carry."""
    b = make_backend("runpod")
    pieces: list[str] = []
    wire.json(200, {"id": "rp-9", "status": "IN_QUEUE"})
    wire.json(200, stream("COMPLETED", {"text": "a"}, {"text": "b"}))
    wire.json(200, {"id": "rp-9", "status": "COMPLETED", "output": [
        {"text": "a"}, {"text": "b", "tokens_in": 3, "tokens_out": 2, "finish_reason": "length"}]})
    c = b.complete(request_for("runpod", on_token=pieces.append))
    assert pieces == ["a", "b"]
    assert (c.text, c.tokens_in, c.tokens_out, c.finish_reason) == ("ab", 3, 2, "length")


def test_a_job_that_fails_mid_stream_raises_its_class(make_backend: Callable[..., Backend],
                                                      wire: Wire) -> None:
    b = make_backend("runpod")
    pieces: list[str] = []
    wire.json(200, {"id": "rp-9", "status": "IN_QUEUE"})
    wire.json(200, stream("IN_PROGRESS", {"text": "par"}))
    wire.json(200, {"id": "rp-9", "status": "FAILED", "stream": [], "error": "worker died"})
    wire.json(200, {"id": "rp-9", "status": "FAILED", "error": "worker died",
                    "output": {"error_type": "upstream_error", "status": None}})
    with pytest.raises(HostDown, match="worker died"):
        b.complete(request_for("runpod", on_token=pieces.append))
    assert pieces == ["par"]


def test_a_stream_past_the_timeout_cancels_the_job(make_backend: Callable[..., Backend],
                                                  wire: Wire) -> None:
    b = make_backend("runpod", timeout_s=0.05)
    wire.json(200, {"id": "rp-9", "status": "IN_QUEUE"})
    for _ in range(400):
        wire.json(200, stream("IN_QUEUE"))
    with pytest.raises(HostDown, match="cancelled"):
        b.complete(request_for("runpod", on_token=lambda _p: None))
    assert str(wire.requests[-1].url).endswith("/cancel/rp-9")
