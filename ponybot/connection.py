"""Where Redis is: one URL, or the primary that Redis Sentinels point at (and follow through a failover).

Every side (bot, worker, CLI, RQ) builds its clients from a :class:`RedisTarget`, so
``redis.sentinels`` and ``redis.master_name`` apply to all of them. A client made
through Sentinel asks the sentinels for the current primary whenever it opens a
connection; after a failover its next connection goes to the promoted replica.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.retry
import redis.sentinel
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff

from ponybot.errors import RedisOutageError

log = logging.getLogger(__name__)

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
            sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
                list(self.sentinels), sentinel_kwargs=dict(SENTINEL_OPTIONS, retry=redis.retry.Retry(NoBackoff(), 0)))
            options.setdefault("retry", redis.retry.Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05),
                                                          SENTINEL_RETRIES))
            client: redis.Redis = sentinel.master_for(self.master_name, **options)  # type: ignore[no-untyped-call, unused-ignore]
            return client
        if self.url is None:
            raise ValueError("a RedisTarget needs a url or sentinels")
        return redis.Redis.from_url(self.url, **options)

    def async_client(self, **options: Any) -> redis.asyncio.Redis:
        """An asyncio client (the bot's delivery loop and progress tracker)."""
        if self.sentinels:
            sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
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


#: What a client raises when Redis went away (a restart, a Sentinel failover, a dropped connection): worth
#: waiting out. Sentinel's "no primary" is a ConnectionError too; other errors (a wrong command) are not.
REDIS_AWAY: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)
#: How long a waiting loop rides out Redis being away before it says so (``redis.outage_patience_s``'s default):
#: longer than a Sentinel promotion or a restart.
OUTAGE_PATIENCE_S = 60.0
#: How often a loop tries Redis again while it is away: a Sentinel promotion takes about 2 s.
RETRY_EVERY_S = 0.5
#: ...and once it has been away past its patience (a loop that goes on waiting then).
RETRY_PAST_PATIENCE_S = 5.0


class Outage:
    """One waiting loop's view of Redis being away, for every such loop (CLI, bot, gallery).

    The loop calls :meth:`away` with each error in :data:`REDIS_AWAY` and sleeps the seconds it
    returns; and :meth:`back` after each round trip that worked, which is True right after an
    outage (re-read what may have changed meanwhile). Redis away for ``redis.outage_patience_s``
    is said in one line: raised as :class:`RedisOutageError` with ``give_up``, else logged once
    while the loop goes on waiting.
    """

    def __init__(self, what: str, patience_s: float, *, where: str = "", give_up: bool = False,
                 hint: str = "") -> None:
        self.what, self.patience_s, self.where, self.give_up, self.hint = what, patience_s, where, give_up, hint
        self.since: float | None = None
        self.said = False

    def away(self, error: Exception) -> float:
        """Seconds to wait before trying again; RedisOutageError past the patience when giving up."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
            log.warning("Redis%s went away (%s): holding %s up to %g s for it (redis.outage_patience_s)",
                        f" at {self.where}" if self.where else "", error, self.what, self.patience_s)
        if now - self.since < self.patience_s:
            return RETRY_EVERY_S
        if self.give_up:
            raise RedisOutageError(self.describe())
        if not self.said:
            self.said = True
            log.error("%s; still trying every %g s", self.describe(), RETRY_PAST_PATIENCE_S)
        return RETRY_PAST_PATIENCE_S

    def back(self) -> bool:
        """Whether an outage just ended (then once, with a line saying how long it lasted)."""
        if self.since is None:
            return False
        log.warning("Redis is back after %.1f s: resuming %s", time.monotonic() - self.since, self.what)
        self.since, self.said = None, False
        return True

    def describe(self) -> str:
        where = f" at {self.where}" if self.where else ""
        hint = f"; {self.hint}" if self.hint else ""
        return (f"Redis{where} has been unreachable for {self.patience_s:g} s (redis.outage_patience_s) "
                f"during {self.what}{hint}")
