"""The worker's record in Redis: which models it holds and which LoRAs and embeddings it can use.

Renewed every ``worker.heartbeat_s`` from a thread of its own (also while a job runs), with a
time-to-live of three heartbeats, and deleted when the worker stops: ``/generate`` offers a
model only while a worker holding it is alive.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

import redis

from ponybot.workers import WorkerRecord, publish_worker, remove_worker
from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)


def worker_record(runtime: WorkerRuntime) -> WorkerRecord:
    """What this worker holds now (its folders scanned again; unchanged files are not read again)."""
    first = runtime.generator.adapters.catalog
    return WorkerRecord(
        name=runtime.name, models=list(runtime.generators),
        descriptions={name: runtime.settings.model_entry(name).description for name in runtime.generators
                      if name in runtime.settings.models},
        device=str(runtime.generator.model.device), loras=first.scan("loras"), embeddings=first.scan("embeddings"),
    )


class Announcer:
    """Context manager: publish the record now, renew it in the background, delete it at the end."""

    def __init__(self, runtime: WorkerRuntime) -> None:
        self.runtime = runtime
        self.interval = runtime.settings.worker.heartbeat_s
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="ponybot-announce", daemon=True)

    def publish(self) -> None:
        try:
            publish_worker(self.runtime.conn, worker_record(self.runtime), self.interval)
        except (redis.RedisError, OSError) as error:
            log.warning("worker record not renewed: %s", error)

    def _loop(self) -> None:
        while not self.stopped.wait(self.interval):
            self.publish()

    def __enter__(self) -> Announcer:
        self.publish()
        self.thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stopped.set()
        self.thread.join()
        try:
            remove_worker(self.runtime.conn, self.runtime.name)
        except redis.RedisError as failure:
            log.warning("worker record not removed (it expires by itself): %s", failure)
