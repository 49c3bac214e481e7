"""Redis writes a finished job depends on, retried while Redis restarts or fails over."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis

log = logging.getLogger(__name__)

T = TypeVar("T")


def with_redis_retry(job_id: str, action: Callable[[], T], give_up_s: float = 120.0) -> T:
    """Run a Redis write, retrying with backoff while Redis restarts, so a finished job is not lost.

    ``action`` must do the whole write each time it is called (a pipeline built inside it, not
    one built outside: redis-py empties a pipeline whose ``execute()`` failed).
    """
    delay, waited = 0.5, 0.0
    while True:
        try:
            return action()
        except (redis.ConnectionError, redis.TimeoutError) as error:
            if waited >= give_up_s:
                raise
            log.warning("job=%s Redis unavailable (%s): retrying in %.1f s", job_id, error, delay)
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, 10)
