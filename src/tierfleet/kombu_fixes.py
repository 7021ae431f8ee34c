"""kombu Redis transports with one fix: a worker survives a Redis blink (issue #11, class 6).

The bug (celery 5.7.0 + kombu 5.7.0; kombu's part is unchanged since 2016):

1. On a broker connection error Celery's consumer runs
   ``on_connection_error_after_connected`` (celery/worker/consumer/consumer.py:466).
   It calls ``connection.collect()`` (line 476) and, new in 5.7.0 (celery PR #10242,
   commit feb789a), ``connection.close()`` right after it (lines 485-487).
2. ``Connection.collect()`` closes the channels, but with Redis down one channel's
   ``close()`` raises a ``ConnectionError``; kombu swallows it
   (kombu/connection.py:414-417) and that channel stays open. collect() then detaches
   the transport anyway: ``self._transport.client = None`` (kombu/connection.py:429).
3. ``connection.close()`` closes that leftover channel again. The Redis
   ``Channel.close()`` first drops its connection pools (kombu/transport/redis.py:1905,
   ``_disconnect_pools``), then restores the unacked messages
   (``QoS.restore_unacked``, redis.py:493), which needs a new pool:
   ``_get_pool`` -> ``_connparams`` reads ``self.connection.client.hostname``
   (redis.py:1959) and the client is now None.
4. The ``AttributeError`` is not a connection error, so ``ignore_errors`` lets it
   through and the worker exits: ``Unrecoverable error: AttributeError("'NoneType'
   object has no attribute 'hostname'")``. A worker started by hand stays down.

The fix, at kombu's transport seam (``broker_transport``, set in :mod:`tierfleet.broker`):
each channel remembers the connection parameters it was created with and builds a
pool from them when its transport has been detached. The restore then fails with an
ordinary ``redis.ConnectionError`` while Redis is down (kombu and Celery already
ignore those on teardown) and the consumer reconnects as designed; it succeeds when
Redis is back, as do late acks of deliveries that finish on the old channel. A
message whose restore failed stays in Redis's ``unacked`` hash, where the fleet's
reaper restores it within ``reliability.dead_after_s`` once no live worker holds it.

Why not pin: kombu's half of the bug is in every kombu since 4.x, and celery 5.6.3
(the last release before PR #10242) also lacks that PR's fix for a worker hanging for
ever on a silent broker socket (celery #9705). Remove this module when kombu keeps
the connection parameters itself (check: tests/integration/test_redis_restart.py).
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis


class _DetachedTransport:
    """What ``_connparams`` and the Sentinel pool read from a transport, kept after
    kombu detached the real one: the kombu Connection and the default port."""

    def __init__(self, client: Any, default_port: int) -> None:
        self.client = client
        self.default_port = default_port
        self.cycle = None  # the poller is gone with the transport


class _RemembersConnParams:
    """Mixin for kombu's Redis channels: build pools even after the transport detached."""

    connection: Any

    def __init__(self, connection: Any, *args: Any, **kwargs: Any) -> None:
        self._tf_conninfo = connection.client
        self._tf_default_port = connection.default_port
        super().__init__(connection, *args, **kwargs)  # type: ignore[call-arg]

    def _get_pool(self, asynchronous: bool = False) -> Any:
        transport = self.connection
        if transport is not None and transport.client is not None:
            return super()._get_pool(asynchronous)  # type: ignore[misc]
        if self._tf_conninfo is None:
            # Nothing to connect with: say so as a connection error, which every
            # teardown path in kombu and Celery tolerates.
            raise redis.ConnectionError("kombu channel detached from its connection")
        # Only for the duration of this call: _connparams and the Sentinel pool read
        # self.connection.client / .default_port. Channels are used by one thread.
        self.connection = _DetachedTransport(self._tf_conninfo, self._tf_default_port)
        try:
            return super()._get_pool(asynchronous)  # type: ignore[misc]
        finally:
            self.connection = transport


class Channel(_RemembersConnParams, kombu_redis.Channel):
    pass


class SentinelChannel(_RemembersConnParams, kombu_redis.SentinelChannel):
    pass


class Transport(kombu_redis.Transport):
    """``redis://`` broker transport with the blink fix."""

    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    """``sentinel://`` broker transport with the blink fix."""

    Channel = SentinelChannel


# Short names, so logs and Flower show "tierfleet-redis://host:port/0" rather than a
# module path; registered on import, which broker.py does in every process.
TRANSPORT_ALIASES.setdefault("tierfleet-redis", f"{__name__}:Transport")
TRANSPORT_ALIASES.setdefault("tierfleet-sentinel", f"{__name__}:SentinelTransport")


def transport_for(url: str) -> str | None:
    """The ``broker_transport`` for a broker URL, or None to let kombu choose.

    Only plain ``redis://`` and ``sentinel://`` get ours: ``rediss://`` makes kombu
    pick its TLS defaults from the scheme, which an explicit transport would skip.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "redis":
        return "tierfleet-redis"
    if scheme == "sentinel":
        return "tierfleet-sentinel"
    return None
