"""Who may call the API: producer tokens, and where an open API may listen.

Producer tokens come from the environment variable named by ``api.tokens_env``
(comma separated ``name:token`` entries, several per producer for rotation, or bare
tokens of the producer ``default``: :mod:`.tenants`) and are compared with
:func:`hmac.compare_digest`. With no token configured the API is open, and
``serve`` refuses to listen on anything but loopback unless told so on purpose;
``flower.py`` applies the same loopback rule to Flower.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from ..config import FleetConfig

__all__ = ["is_loopback", "load_tokens", "token_check"]


def load_tokens(config: FleetConfig, environ: Mapping[str, str] | None = None) -> list[str]:
    """Producer tokens from the variable named by ``api.tokens_env`` (comma separated)."""
    env = os.environ if environ is None else environ
    raw = env.get(config.api.tokens_env, "")
    return [t.strip() for t in raw.split(",") if t.strip()]


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (localhost, 127/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _producer_of(given: str, tokens: Sequence[tuple[bytes, str]]) -> str | None:
    g = given.encode()
    found: str | None = None
    for t, producer in tokens:  # every token is compared: timing says nothing of which matched
        if hmac.compare_digest(g, t):
            found = producer
    return found


def token_check(tokens: Sequence[str]) -> Callable[..., Awaitable[str]]:
    """A FastAPI dependency that demands one of ``tokens`` as a bearer and returns its
    producer's name (no tokens: the API is open, and every caller is ``default``)."""
    # Imported here: the rest of this module serves Flower too, which has no FastAPI.
    from fastapi import Depends
    from fastapi.security import HTTPBearer

    from .errors import ApiError
    from .tenants import DEFAULT, parse_tokens

    token_list = [(t.encode(), p) for t, p in parse_tokens(tokens).items()]
    bearer = HTTPBearer(auto_error=False, description="a producer token (api.tokens_env)")

    # A plain default, not Annotated[..., Depends(bearer)], and ``Any`` for the type
    # (an HTTPAuthorizationCredentials or None): with postponed annotations FastAPI
    # resolves names in the module's globals, where the lazily imported ones are not.
    async def require_token(creds: Any = Depends(bearer)) -> str:
        if not token_list:
            return DEFAULT
        if creds is None or creds.scheme.lower() != "bearer":
            raise ApiError(401, "missing bearer token (Authorization: Bearer <token>)",
                           code="missing_api_key", headers={"WWW-Authenticate": "Bearer"})
        producer = _producer_of(creds.credentials, token_list)
        if producer is None:
            raise ApiError(401, "invalid bearer token", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        return producer

    return require_token
