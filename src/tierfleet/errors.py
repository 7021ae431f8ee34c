"""Precise errors: each names what was wrong and, where it helps, what to do."""

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
