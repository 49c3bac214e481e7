"""The post stage: finished batches' post-processing on one thread, in order, while the GPU runs the next.

``depth`` bounds how many finished batches may wait or be in post-processing at once; handing
over one more waits until a slot frees (the GPU stage never runs ahead of it by more than that).
Depth 0 runs each batch's post-processing in the caller's thread, one after another.

A thread cannot be stopped from outside, so post-processing that outlives its limit (a classifier
that hangs) is reported to ``on_stuck`` by a watchdog: the worker exits, and the jobs whose heartbeats
stop with it are retried elsewhere, as they would be had the job's own time limit ended it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: How often the watchdog looks at the work in hand.
WATCH_EVERY_S = 1.0


@dataclass
class Work:
    run: Callable[[], None]
    what: str = "post-processing"
    limit_s: float | None = None


class PostStage:
    """One thread taking post-processing work in the order it was handed over."""

    def __init__(self, depth: int, *, on_stuck: Callable[[str, float], None] | None = None) -> None:
        self.depth = depth
        self.on_stuck = on_stuck
        self._slots = threading.Semaphore(max(1, depth))
        self._work: queue.Queue[Work | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._current: tuple[Work, float] | None = None  #: the work in hand and when it started
        self._closing = threading.Event()

    def submit(self, work: Callable[[], None], *, what: str = "post-processing", limit_s: float | None = None
               ) -> None:
        """Run ``work`` after every earlier one; waits while ``depth`` batches are still in the stage.

        ``limit_s``: how long it may take before the watchdog reports it stuck (None: no limit)."""
        if not self.depth:
            work()
            return
        self._slots.acquire()
        if self._thread is None:
            self._closing.clear()
            self._thread = threading.Thread(target=self._run, name="ponybot-post-stage", daemon=True)
            self._thread.start()
            if self.on_stuck is not None:
                threading.Thread(target=self._watch, args=(self._thread,), name="ponybot-post-watchdog",
                                 daemon=True).start()
        self._work.put(Work(work, what, limit_s))

    def drain(self) -> None:
        """Wait until every batch handed over has been post-processed."""
        if self._thread is not None:
            self._work.join()

    def close(self) -> None:
        """Drain, then stop the thread (a later :meth:`submit` starts a new one)."""
        if self._thread is None:
            return
        self.drain()
        self._work.put(None)
        self._thread.join()
        self._thread = None
        self._closing.set()

    def _run(self) -> None:
        while True:
            work = self._work.get()
            try:
                if work is None:
                    return
                self._current = (work, time.monotonic())
                work.run()
            except Exception:  # the work reports its own failures; never lose the thread over one
                log.exception("post-processing failed")
            finally:
                self._current = None
                if work is not None:
                    self._slots.release()
                self._work.task_done()

    def _watch(self, stage_thread: threading.Thread) -> None:
        """Watch the work of ``stage_thread`` until it stops (a later stage thread has a watchdog of its own)."""
        reported: Work | None = None
        while not self._closing.wait(WATCH_EVERY_S) and self._thread is stage_thread:
            current = self._current
            if current is None:
                continue
            work, started = current
            elapsed = time.monotonic() - started
            if work is not reported and work.limit_s is not None and elapsed > work.limit_s:
                reported = work
                assert self.on_stuck is not None
                self.on_stuck(work.what, elapsed)
