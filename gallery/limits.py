"""Rate limits on likes, reports and sign-ins, shared by every gallery process through Redis.

Each key keeps a sliding window: a sorted set of the event times in ``window_s``, trimmed,
counted and added to in one Lua script (atomic), timed by Redis' own clock so gallery hosts
whose clocks differ still agree. While Redis is unreachable each process falls back to the
same window in its own memory: the limits then hold per process, and the site stays up.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import defaultdict, deque

import redis
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ponybot import keys

log = logging.getLogger(__name__)

# KEYS[1]: the window; ARGV: limit, window in microseconds, a unique member. Returns 1 if allowed.
SLIDING_WINDOW = """
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local window_us = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_us - window_us)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now_us, ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil(window_us / 1000))
return 1
"""


class LocalWindow:
    """At most ``limit`` events per ``window_s`` for each key, in this process."""

    def __init__(self) -> None:
        self.events: dict[str, deque[float]] = defaultdict(deque)
        self.lock = threading.Lock()

    def allow(self, key: str, limit: int, window_s: float) -> bool:
        now = time.monotonic()
        with self.lock:
            seen = self.events[key]
            while seen and seen[0] <= now - window_s:
                seen.popleft()
            if len(seen) >= limit:
                return False
            seen.append(now)
            return True


class RateLimiter:
    """Sliding-window limits, in Redis when given a connection (all gallery processes share them)."""

    def __init__(self, conn: redis.Redis | None = None) -> None:
        self.local = LocalWindow()
        self.script = conn.register_script(SLIDING_WINDOW) if conn is not None else None
        self.redis_away = False

    def allow(self, key: str, limit: int, window_s: float) -> bool:
        if self.script is None:
            return self.local.allow(key, limit, window_s)
        try:
            allowed = bool(self.script(keys=[keys.gallery_limit(key)],
                                       args=[limit, int(window_s * 1_000_000), secrets.token_hex(8)]))
        except redis.RedisError as error:
            if not self.redis_away:
                log.warning("rate limits held in this process while Redis is unreachable: %s", error)
            self.redis_away = True
            return self.local.allow(key, limit, window_s)
        if self.redis_away:
            log.info("rate limits shared through Redis again")
            self.redis_away = False
        return allowed

    async def check(self, key: str, limit: int, window_s: float, what: str) -> None:
        """Raises 429 naming ``what`` when the key is over its limit (Redis is asked off the event loop)."""
        if not await run_in_threadpool(self.allow, key, limit, window_s):
            raise HTTPException(429, f"Too many {what}: wait a little and try again.")
