"""The jobs the benchmarks submit: rules jobs, the home-lab day, a mixed day, 1k-token prompts.

Everything is built from a fixed seed, so two runs submit the same jobs. The
1k-token prompts are cut from the labelled prompts in the shared data folder
when it is there (read at run time, never copied), else from generated text.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from tierfleet import tokens

SEED = 7
# A 1x1 PNG: enough for a vision job's shape; the simulated host bills it like any image.
TINY_PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5E"
            "rkJggg==")

_TOPICS = ["the deploy", "the VPN outage", "the invoice run", "the login page", "the Q3 budget",
           "the printer fleet", "the onboarding flow", "the backup job", "the search index",
           "the billing export", "the mobile release", "the data retention policy"]
_PEOPLE = ["Ana", "Bo", "Chen", "Dara", "Eli", "Femi", "Gus", "Hana", "Ivo", "Jun"]
_ERRORS = ["ECONNREFUSED 127.0.0.1:5432", "KeyError: 'user_id'", "OOMKilled (exit code 137)",
           "x509: certificate has expired or is not yet valid",
           "npm ERR! ERESOLVE unable to resolve dependency tree",
           "psycopg2.errors.UniqueViolation: duplicate key value violates unique constraint",
           "java.lang.NullPointerException at OrderService.java:88", "429 Too Many Requests",
           "fatal: refusing to merge unrelated histories", "SSL: WRONG_VERSION_NUMBER"]


def _email(rng: random.Random, i: int) -> str:
    who, topic = rng.choice(_PEOPLE), rng.choice(_TOPICS)
    return (f"Hi team, quick update {i} on {topic}: {who} found that the change from Tuesday "
            f"broke two downstream reports, so we rolled back at 14:10. We will retry on "
            f"Thursday after {rng.choice(_PEOPLE)} reviews the migration. No customer data was "
            f"affected, but the finance dashboard shows stale numbers until the rerun. "
            f"Please hold any related merges until then. Thanks, {who}")


def rules_jobs(n: int, start: int = 0) -> list[dict[str, Any]]:
    """keyword_route jobs: the home lab's ticket router, as the rules tier runs it."""
    words = ["VPN drops every hour", "Outlook asks for my password", "printer jam on floor 3",
             "email bounced from a customer", "cannot reach the vpn gateway", "laptop fan noise"]
    return [{"kind": "keyword_route", "input": {"text": f"ticket {start + i}: {words[i % len(words)]}"},
             "workflow": "helpdesk"} for i in range(n)]


# -- the home-lab day ----------------------------------------------------------------------------


def home_lab_day() -> list[dict[str, Any]]:
    """30 quick questions, 5 code tasks, 2 vision tasks, 1 deep reasoning task (the home-lab example)."""
    rng = random.Random(SEED)
    jobs: list[dict[str, Any]] = []
    for i in range(30):
        if i % 3 == 0:
            jobs.append({"kind": "summary", "prompt": f"Summarize this email in two sentences:\n\n"
                                                      f"{_email(rng, i)}"})
        elif i % 3 == 1:
            jobs.append({"kind": "chat", "prompt": f"What does this error mean, in one line? "
                                                   f"{_ERRORS[i % len(_ERRORS)]} (seen in run {i})"})
        else:
            jobs.append({"kind": "chat", "prompt": f"Rephrase this more politely: we can't ship "
                                                   f"{rng.choice(_TOPICS)} this week, ask again "
                                                   f"later (note {i})."})
    code = ["Write a Python function that parses ISO 8601 durations like PT1H30M into seconds.",
            "Debug this function: def avg(xs): return sum(xs) / len(xs) fails on empty lists.",
            "Add pytest tests for a slugify(text) function that lowercases and joins words with '-'.",
            "Refactor this JavaScript callback chain into async/await: getUser(id, u => "
            "getOrders(u, o => render(o)))",
            "Implement an LRU cache class in TypeScript with get and put in O(1)."]
    jobs += [{"kind": "code", "prompt": p} for p in code]
    jobs += [{"kind": "vision", "prompt": p, "images": [TINY_PNG]}
             for p in ("What's in this screenshot? List every error dialog you can see.",
                       "Read the chart in this picture and say which month peaked.")]
    jobs.append({"kind": "reasoning", "prompt": "Compare two caching strategies for a read-heavy "
                 "API (write-through vs cache-aside) and evaluate which fails more gracefully "
                 "when the cache cluster restarts. Reason step by step."})
    for i, job in enumerate(jobs):
        job.update(workflow="seed-day", id=f"seed-{i:02d}")
    return jobs


def yesterday() -> list[dict[str, Any]]:
    """A few jobs the fleet ran before the day: one per GPU model, one on Runpod, two quick."""
    jobs: list[dict[str, Any]] = [
        {"kind": "code", "prompt": "Write a Python function that reverses a linked list."},
        {"kind": "vision", "prompt": "What does this icon show?", "images": [TINY_PNG]},
        {"kind": "reasoning", "prompt": "Why might a cache stampede happen after a deploy?"},
        {"kind": "code", "prompt": "Write a Go function that merges two sorted slices.",
         "tier": "runpod"},
        {"kind": "chat", "prompt": "What does HTTP 418 mean, in one line?"},
        {"kind": "summary", "prompt": "Summarize: the backup job ran late because of the VPN."},
    ]
    for i, job in enumerate(jobs):
        job.update(workflow="seed-yesterday", id=f"yday-{i:02d}")
    return jobs


def pinned(jobs: list[dict[str, Any]], tier: str, model: str | None, prefix: str) -> list[dict[str, Any]]:
    """The same jobs, every one sent to ``tier`` (and ``model``): the world without routing."""
    out = []
    for job in jobs:
        copy = {**job, "tier": tier, "id": f"{prefix}-{job['id']}"}
        if model is not None:
            copy["model"] = model
        out.append(copy)
    return out


# -- a mixed day for the cost figure ----------------------------------------------------------


def mixed_day() -> list[dict[str, Any]]:
    """A support team's day: tickets and logs handled by rules, mail summarised and
    classified, some code, a few risky or customer-facing texts, one large document,
    and some confidential notes."""
    rng = random.Random(SEED + 1)
    jobs: list[dict[str, Any]] = []
    jobs += rules_jobs(40)
    for i in range(15):
        jobs.append({"kind": "json_validate", "workflow": "intake", "input": {
            "document": json.dumps({"id": i, "email": f"user{i}@example.org",
                                    "tags": ["a", "b"] if i % 4 else [1]}),
            "schema": {"type": "object", "required": ["id", "email"],
                       "properties": {"id": {"type": "integer"},
                                      "tags": {"type": "array", "items": {"type": "string"}}}}}})
    for i in range(15):
        jobs.append({"kind": "regex_extract", "workflow": "intake", "input": {
            "text": f"order {100 + i} by {rng.choice(_PEOPLE).lower()}@example.org, "
                    f"order {200 + i} by ops@example.org",
            "pattern": r"order (?P<id>\d+) by (?P<email>\S+@\S+?)(?=,|$)"}})
    for i in range(10):
        lines = "\n".join(f"2024-05-01 02:{m:02d}:11 {'ERROR' if m % 3 == 0 else 'INFO'} "
                          f"db: step {m} of batch {i}" for m in range(30))
        jobs.append({"kind": "log_slice", "workflow": "oncall",
                     "input": {"text": lines, "levels": ["ERROR"], "start": "02:00", "end": "02:15"}})
    for i in range(40):
        jobs.append({"kind": "summary", "workflow": "inbox",
                     "prompt": f"Summarize this email in two sentences:\n\n{_email(rng, i)}"})
    for i in range(20):
        jobs.append({"kind": "classification", "workflow": "inbox",
                     "prompt": f"Classify this message as billing, bug, access or other: "
                               f"{_email(rng, 100 + i)}"})
    for i in range(15):
        jobs.append({"kind": "extraction", "workflow": "inbox",
                     "prompt": f"Extract the people, dates and systems named here as JSON: "
                               f"{_email(rng, 200 + i)}"})
    for i in range(10):
        jobs.append({"kind": "chat", "workflow": "helpdesk",
                     "prompt": f"What does this error mean? {_ERRORS[i % len(_ERRORS)]}"})
    code = home_lab_day()[30:35]
    for i in range(10):
        jobs.append({"kind": "code", "workflow": "engineering",
                     "prompt": f"{code[i % len(code)]['prompt']} (variant {i})"})
    for i in range(4):
        jobs.append({"kind": "writing", "workflow": "customer-comms",
                     "prompt": f"Write a short apology to a customer about {rng.choice(_TOPICS)}, "
                               f"offering a call this week (draft {i})."})
    for i in range(4):
        jobs.append({"kind": "summary", "workflow": "legal", "risk": "high",
                     "prompt": f"Summarize the liability terms a customer is asking to change: "
                               f"{_email(rng, 300 + i)}"})
    for i in range(6):
        jobs.append({"kind": "summary", "workflow": "hr", "privacy": "confidential",
                     "prompt": f"Summarize this confidential HR note: {_email(rng, 400 + i)}"})
    # One long document, past the local hosts' 32k windows: the rented GPU's job.
    report = " ".join(_email(rng, 500 + k) for k in range(520))
    jobs.append({"kind": "summary", "workflow": "research",
                 "prompt": f"Summarize the recurring problems in these incident mails:\n{report}"})
    for i, job in enumerate(jobs):
        job["id"] = f"day-{i:03d}"
    return jobs


def as_paid(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The always-paid world: every job asked of the paid model, as teams do without a router.

    A rules job becomes the prompt a team would send instead (its input as text);
    privacy is set to internal because that world sends everything to the provider.
    """
    out = []
    for job in jobs:
        copy = {k: v for k, v in job.items() if k not in ("input", "privacy", "risk")}
        if "input" in job:
            copy["kind"] = "extraction"
            copy["prompt"] = (f"Do this {job['kind'].replace('_', ' ')} task and answer in JSON: "
                              f"{json.dumps(job['input'])}")
        copy.update(tier="paid", id=f"paid-{job['id']}")
        out.append(copy)
    return out


# -- 1k-token prompts for the routing latency -------------------------------------------------


def _data_dir() -> Path | None:
    env = os.environ.get("TIERFLEET_DATA_DIR")
    candidates = [Path(env) / "dev" if env else None, Path(env) if env else None,
                  Path(__file__).resolve().parents[2] / "shared" / "data" / "dev"]
    for c in candidates:
        if c is not None and (c / "task_queries.jsonl").exists():
            return c
    return None


def route_prompts(n: int, n_tokens: int = 1000) -> tuple[list[str], str]:
    """``n`` distinct prompts of exactly ``n_tokens`` tokens, and where their words came from."""
    rng = random.Random(SEED + 2)
    folder = _data_dir()
    texts: list[str] = []
    if folder is not None:
        with (folder / "task_queries.jsonl").open(encoding="utf-8") as fh:
            for line in fh:
                p = json.loads(line).get("prompt")
                if isinstance(p, str) and p.strip():
                    texts.append(p.strip())
        source = f"{folder.name}/task_queries.jsonl (shared data, read at run time)"
    else:
        vocab = [w for e in _ERRORS + _TOPICS for w in e.split()] + ["summarize", "explain",
                                                                     "function", "report"]
        texts = [" ".join(rng.choice(vocab) for _ in range(60)) for _ in range(400)]
        source = "generated text (shared data folder not found)"
    enc = tokens.encoding()
    rng.shuffle(texts)
    corpus = enc.encode("\n\n".join(texts[:3000]), disallowed_special=())
    if len(corpus) < n_tokens + 1:
        corpus = corpus * (n_tokens // max(len(corpus), 1) + 2)
    step = max(1, (len(corpus) - n_tokens) // max(n, 1))
    prompts = []
    for i in range(n):
        start = (i * step + rng.randrange(step)) % (len(corpus) - n_tokens)
        prompts.append(enc.decode(corpus[start:start + n_tokens]))
    return prompts, source
