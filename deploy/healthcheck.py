"""Health probes for containers and service monitors: exit 0 when healthy, 1 when not.

    python healthcheck.py http URL     an HTTP service answers (any status below 500)
    python healthcheck.py redis [URL]  the broker answers PING (default: the fleet
                                       config's redis_url, so TIERFLEET_REDIS_URL applies)

Any answer below 500 counts for HTTP: the API and Flower answer 401 to a probe
without credentials, which still proves the process serves requests, and the
probe must not need a token. Broker URLs carry passwords, so nothing here ever
prints a URL.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

TIMEOUT_S = 3.0


def http_alive(url: str, timeout: float = TIMEOUT_S) -> bool:
    if not url.startswith(("http://", "https://")):
        raise ValueError("only http(s) URLs are probed")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status) < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (urllib.error.URLError, OSError, ValueError):
        return False


def redis_alive(url: str | None = None, timeout: float = TIMEOUT_S) -> bool:
    import redis

    if url is None:
        from tierfleet.config import load_config

        url = load_config().redis_url
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "http":
        ok = http_alive(argv[1])
    elif argv and argv[0] == "redis":
        ok = redis_alive(argv[1] if len(argv) > 1 else None)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print("ok" if ok else "unhealthy")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
