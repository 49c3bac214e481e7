"""What a worker accepts out of Redis: an RQ job that can run only ponybot's generation, and how many
times a worker started it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import redis
from rq.job import Job as RQJob

from ponybot import keys
from ponybot.errors import ForgedJobError


class SafeJob(RQJob):
    """An RQ job that can only ever run :attr:`handler`: no imports by name, no callbacks."""

    handler: ClassVar[Callable[[str], Any]]

    @property
    def func(self) -> Callable[[str], Any]:
        if self.func_name != keys.GENERATE_FUNC or self.instance is not None:
            raise ForgedJobError(f"refusing job {self.id}: it names {self.func_name!r}, not {keys.GENERATE_FUNC!r}")
        return type(self).handler

    @property
    def success_callback(self) -> None:
        return self._no_callback(self._success_callback_name)

    @property
    def failure_callback(self) -> None:
        return self._no_callback(self._failure_callback_name)

    @property
    def stopped_callback(self) -> None:
        return self._no_callback(self._stopped_callback_name)

    def _no_callback(self, name: str | None) -> None:
        if name:
            raise ForgedJobError(f"refusing job {self.id}: it asks for callback {name!r}")
        return None


#: Field of RQ's job hash counting the times a worker started the job (RQ's own saves leave it alone).
ATTEMPTS_FIELD = "ponybot_attempts"


def attempts_of(conn: redis.Redis, job: RQJob) -> int:
    """How many times a worker started ``job``."""
    raw = conn.hget(job.key, ATTEMPTS_FIELD)
    return int(raw) if raw else 0
