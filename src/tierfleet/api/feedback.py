"""``POST /v1/jobs/{id}/feedback``: the producer's verdict on an answer, kept as a label.

A label ties the verdict to the ledger record of the call that answered, so the
router learns where its cheap answers fall short (``tierfleet.labels``). The
answer shows no prompt: only the label's bookkeeping and scores.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from ..config import FleetConfig
from ..dispatch import Dispatcher
from ..labels import NoAnswer, record_feedback
from .errors import ERROR_RESPONSES, ApiError, ErrorResponse
from .openai import JOB_ID_PATTERN
from .tenants import Owners


class Feedback(BaseModel):
    """good/bad, or a score in 0..1 (a score wins); a short note is kept with the label."""

    model_config = ConfigDict(extra="forbid")

    good: bool | None = None
    score: float | None = Field(default=None, ge=0, le=1)
    note: str | None = Field(default=None, max_length=500)

    @model_validator(mode="after")
    def _says_something(self) -> Feedback:
        if self.good is None and self.score is None:
            raise ValueError("good: give good (true/false) or a score in 0..1")
        return self


def add_feedback_route(app: FastAPI, d: Dispatcher, cfg: FleetConfig,
                       require: Callable[..., Awaitable[str]], owners: Owners) -> None:
    @app.post("/v1/jobs/{job_id}/feedback", tags=["jobs"],
              responses={**ERROR_RESPONSES, 404: {"model": ErrorResponse,
                                                  "description": "no answer for this job id"}},
              summary="Say whether a job's answer was good (a label for the router)")
    async def feedback(
        job_id: Annotated[str, Path(min_length=1, max_length=128, pattern=JOB_ID_PATTERN)],
        body: Feedback,
        producer: str = Depends(require),
    ) -> dict[str, Any]:
        try:
            if not await run_in_threadpool(owners.owns, producer, job_id):
                # Another producer's job answers as one without an answer: the same words.
                raise NoAnswer(job_id)
            label = await run_in_threadpool(record_feedback, d.redis, cfg, job_id,
                                            good=body.good, score=body.score, note=body.note)
        except NoAnswer as exc:
            raise ApiError(404, str(exc), code="job_not_found", param="job_id") from None
        return label.shown()



