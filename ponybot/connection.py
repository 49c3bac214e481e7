"""Where Redis is: one URL, or the primary that Redis Sentinels point at (and follow through a failover).

Every side (bot, worker, CLI, RQ) builds its clients from a :class:`RedisTarget`, so
``redis.sentinels`` and ``redis.master_name`` apply to all of them. A client made
through Sentinel asks the sentinels for the current primary whenever it opens a
connection; after a failover its next connection goes to the promoted replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.retry
import redis.sentinel
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff

#: Timeouts for talking to the sentinels themselves (they answer at once or are down).
SENTINEL_OPTIONS: dict[str, Any] = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
#: Retries of a command through Sentinel while a failover settles (a sentinel still naming the dead primary,
#: a pooled connection to it), backing off to at most 0.5 s: redis-py gives the clients ``master_for`` makes
#: no retry of their own. Each sentinel is asked once per attempt (no retry in ``sentinel_kwargs``): retries
#: nested in retries took 72 s to report sentinels that nobody runs.
SENTINEL_RETRIES = 4


@dataclass(frozen=True)
class RedisTarget:
    """A Redis URL, or sentinels plus the name of the primary they monitor."""

    url: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str = "ponybot"

    @classmethod
    def of(cls, target: RedisTarget | str) -> RedisTarget:
        return target if isinstance(target, RedisTarget) else cls(url=target)

    def describe(self) -> str:
        """For messages: the URL without its password, or the sentinels and the primary's name."""
        if self.sentinels:
            where = ", ".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"primary {self.master_name!r} of sentinels {where}"
        return redact(self.url or "")

    def client(self, **options: Any) -> redis.Redis:
        """A blocking client (redis-py, RQ)."""
        if self.sentinels:
            sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
                list(self.sentinels), sentinel_kwargs=dict(SENTINEL_OPTIONS, retry=redis.retry.Retry(NoBackoff(), 0)))
            options.setdefault("retry", redis.retry.Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05),
                                                          SENTINEL_RETRIES))
            client: redis.Redis = sentinel.master_for(self.master_name, **options)  # type: ignore[no-untyped-call]
            return client
        if self.url is None:
            raise ValueError("a RedisTarget needs a url or sentinels")
        return redis.Redis.from_url(self.url, **options)

    def async_client(self, **options: Any) -> redis.asyncio.Redis:
        """An asyncio client (the bot's delivery loop and progress tracker)."""
        if self.sentinels:
            sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
                list(self.sentinels), sentinel_kwargs=dict(SENTINEL_OPTIONS,
                                                           retry=redis.asyncio.retry.Retry(NoBackoff(), 0)))
            options.setdefault("retry", redis.asyncio.retry.Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05),
                                                                  SENTINEL_RETRIES))
            aclient: redis.asyncio.Redis = sentinel.master_for(self.master_name, **options)
            return aclient
        if self.url is None:
            raise ValueError("a RedisTarget needs a url or sentinels")
        return redis.asyncio.Redis.from_url(self.url, **options)


def redact(url: str) -> str:
    """``url`` without its password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"
