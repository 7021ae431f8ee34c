"""Is a cheap answer good enough to keep? If not, the worker escalates one tier up."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .backends.base import Completion
from .jobs import Job

# Openings of a refusal; matched at the start so that answers quoting them do not trip it.
_REFUSAL = re.compile(
    r"^\s*(i'?m sorry,? but |i am sorry,? but |sorry, i can(no|')t |i can(no|')t (help|assist) "
    r"|i (am|'m) (not able|unable) to (help|assist|comply)|as an ai( language model)?, i can)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""


def check(job: Job, completion: Completion) -> Verdict:
    """Is ``completion`` good enough to keep for ``job``? Cheap checks only, no second model."""
    text = (completion.text or "").strip()
    if completion.simulated and text.startswith("[simulated"):
        # Simulated hosts label every answer; judge what follows the label.
        text = text.split("]", 1)[-1].strip()
    if not text:
        return Verdict(False, "empty answer")
    if completion.finish_reason == "length" and job.max_tokens is None:
        # Cut by the host's own limit. A cap the producer set cuts a bigger model too,
        # so escalating would only pay twice for the same short answer.
        return Verdict(False, "answer cut off by the host's token limit")
    if _REFUSAL.search(text):
        return Verdict(False, "the model refused")
    if job.json_output:
        try:
            json.loads(_strip_fence(text))
        except ValueError:
            return Verdict(False, "invalid JSON where JSON was asked")
    return Verdict(True)


def _strip_fence(text: str) -> str:
    m = re.match(r"^```(?:json)?\s*(.*?)\s*```$", text, re.DOTALL)
    return m.group(1) if m else text
