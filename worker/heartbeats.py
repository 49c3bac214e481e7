"""Job heartbeats, and when a lapsed one means its worker died rather than that Redis was away.

A job's heartbeat is an expiry time in Redis, renewed by its worker every ``heartbeat_s``. While
Redis is up, one that lapsed means the worker is gone, and the sweep re-queues the job. But after
Redis itself was away (a restart, a failover) for longer than the heartbeat's time-to-live, every
running job's heartbeat has lapsed, those of live workers too: sweeping then would run those jobs
a second time. So the sweep waits for a grace period after Redis restarted, or after this worker
last failed to reach it, in which live workers renew their heartbeats.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

import redis
from rq.job import Job as RQJob

log = logging.getLogger(__name__)

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


class Beating(Protocol):
    """What the heartbeat thread needs of its worker (``worker.runner.GenerationWorker``), and no more."""

    watch: RedisWatch
    beating: set[Heartbeats]
    beating_lock: threading.Lock

    @property
    def heartbeat_s(self) -> float: ...

    @property
    def should_run_maintenance_tasks(self) -> bool: ...

    def maintain_heartbeats(self, job: RQJob, execution: Any) -> None: ...

    def _next_sweep_in(self) -> float: ...

    def sweep(self) -> None: ...


class Heartbeats:
    """Job heartbeats for one batch on their own thread, from its start until RQ is told it ended."""

    def __init__(self, worker: Beating, running: list[tuple[RQJob, Any]]) -> None:
        self.worker = worker
        self.running = running
        self.done = threading.Event()
        with worker.beating_lock:
            worker.beating.add(self)
        self.thread = threading.Thread(target=self._beat, name="ponybot-heartbeats", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.done.set()
        with self.worker.beating_lock:
            self.worker.beating.discard(self)
        if self.thread is not threading.current_thread():
            self.thread.join()

    def renew(self) -> None:
        """Every job of the batch's heartbeat, now; RedisError while Redis is away."""
        for job, execution in self.running:
            self.worker.maintain_heartbeats(job, execution)

    def _beat(self) -> None:
        """Heartbeats every ``heartbeat_s``, and the sweep for jobs abandoned by dead workers every
        ``maintenance_s`` (RQ sweeps only between jobs, so busy workers would never sweep)."""
        worker = self.worker
        next_beat = time.monotonic() + worker.heartbeat_s
        while not self.done.wait(max(0.0, min(next_beat - time.monotonic(), worker._next_sweep_in()))):
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + worker.heartbeat_s
                try:
                    self.renew()
                except redis.RedisError as error:
                    worker.watch.trouble()
                    log.warning("job=%s heartbeat failed: %s", self.running[0][0].id, error)
            if worker.should_run_maintenance_tasks:
                worker.sweep()
