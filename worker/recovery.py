"""When a job's missing heartbeat means its worker died, and when it only means Redis was away.

A job's heartbeat is an expiry time in Redis, renewed by its worker every ``heartbeat_s``. While
Redis is up, one that lapsed means the worker is gone, and the sweep re-queues the job. But after
Redis itself was away (a restart, a failover) for longer than the heartbeat's time-to-live, every
running job's heartbeat has lapsed, those of live workers too: sweeping then would run those jobs
a second time. So the sweep waits for a grace period after Redis restarted, or after this worker
last failed to reach it, in which live workers renew their heartbeats.
"""

from __future__ import annotations

import time

import redis

#: The shortest grace, in seconds: room for a worker's reconnection back-off on a busy host.
MIN_GRACE_S = 10.0


def grace_s(heartbeat_s: float) -> float:
    """How long after an outage the sweep waits: a heartbeat's time-to-live (3 beats), at least MIN_GRACE_S."""
    return max(3.0 * heartbeat_s, MIN_GRACE_S)


class RedisWatch:
    """Remembers when this worker last failed to reach Redis, and tells the sweep whether to wait."""

    def __init__(self, heartbeat_s: float) -> None:
        self.grace_s = grace_s(heartbeat_s)
        self.trouble_at = float("-inf")

    def trouble(self) -> None:
        """Call on every failure to reach Redis."""
        self.trouble_at = time.monotonic()

    def unsettled(self, conn: redis.Redis) -> str | None:
        """Why the sweep should wait now, or None when a lapsed heartbeat means a dead worker."""
        since = time.monotonic() - self.trouble_at
        if since < self.grace_s:
            return f"this worker reached Redis again {since:.0f} s ago"
        uptime = int(conn.info("server")["uptime_in_seconds"])
        if uptime < self.grace_s:
            return f"Redis started {uptime} s ago"
        return None
