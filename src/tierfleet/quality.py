"""Is a cheap answer good enough to keep? If not, the worker escalates one tier up."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from .backends.base import Completion
from .config import LimitsConfig
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
    if completion.tool_calls:
        # A function call is the answer: its arguments must be JSON the caller can run.
        for call in completion.tool_calls:
            try:
                json.loads((call.get("function") or {}).get("arguments") or "{}")
            except (ValueError, TypeError):
                return Verdict(False, "tool call arguments are not JSON")
        return Verdict(True)
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
    if job.json_schema is not None:
        return schema_verdict(job.json_schema, _strip_fence(text))
    if job.json_output:
        try:
            json.loads(_strip_fence(text))
        except ValueError:
            return Verdict(False, "invalid JSON where JSON was asked")
    return Verdict(True)


def schema_verdict(schema: dict[str, Any], text: str) -> Verdict:
    """The rules tier's own validator on a model's answer: JSON, and valid for ``schema``."""
    from .rules import json_validate

    inp = json_validate.JsonValidateInput(document=text, schema=schema)
    # ``run`` reads only the limits off the config: the defaults bound a model's answer.
    found = json_validate.run(inp, SimpleNamespace(limits=LimitsConfig()))  # type: ignore[arg-type]
    if found["valid"]:
        return Verdict(True)
    first = found["errors"][0]
    return Verdict(False, f"answer does not match the JSON schema at {first['path']}: "
                          f"{first['message']}")


def _strip_fence(text: str) -> str:
    m = re.match(r"^```(?:json)?\s*(.*?)\s*```$", text, re.DOTALL)
    return m.group(1) if m else text
