"""Precise errors: each names what was wrong and, where it helps, what to do.

Every error the package raises on purpose derives from :class:`TierfleetError`,
so ``except TierfleetError`` catches all of them and nothing else. The tree,
with where each class lives::

    TierfleetError
     ├── ConfigError              the fleet config is missing, unreadable or inconsistent
     ├── JobRejected              a job failed validation at submit time (``field``, ``message``)
     ├── NoRoute                  no tier may take the job
     ├── ResultTimeout            the job did not finish within the caller's wait
     ├── RuleFailed               rules/_common.py: a rules executor refused its input
     ├── InventoryError           reports/inventory.py: an inventory or prices file is unusable
     ├── LocalModelError          lab/localmodel.py: the bundled local model server failed
     └── BackendError             backends/base.py: a model host failed a request (``host``, ``status``)
          │   another place may help (``fallback = True``): the runner moves on
          ├── HostDown                connection refused, timeout, 5xx
          ├── RateLimited             429; waited out when ``retry_after`` fits the budget
          ├── QuotaExhausted          billing quota gone: the breaker opens hard
          ├── ContextTooLong          only a host with a larger window helps
          │   fail the job (``fallback = False``): another host would answer the same
          ├── BadRequest
          ├── AuthError
          └── ModelNotFound

The runner decides what to do with a :class:`BackendError` by its ``fallback``
flag, not by the order of its ``except`` clauses; the subclasses say *how* to
fall back (open the breaker hard, look for a larger window).
"""

from __future__ import annotations


class TierfleetError(Exception):
    """Base of every error the package raises on purpose."""


class ConfigError(TierfleetError):
    """The fleet config is missing, unreadable or inconsistent."""


class JobRejected(TierfleetError):
    """A job failed validation at submit time; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NoRoute(TierfleetError):
    """No tier may take the job (for example privacy forbids every configured tier)."""


class ResultTimeout(TierfleetError):
    """The job did not finish within the wait the caller gave."""
