"""The post stage: finished batches' post-processing on one thread, in order, while the GPU runs the next.

``depth`` bounds how many finished batches may wait or be in post-processing at once; handing
over one more waits until a slot frees (the GPU stage never runs ahead of it by more than that).
Depth 0 runs each batch's post-processing in the caller's thread, one after another.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class PostStage:
    """One thread taking post-processing work in the order it was handed over."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self._slots = threading.Semaphore(max(1, depth))
        self._work: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def submit(self, work: Callable[[], None]) -> None:
        """Run ``work`` after every earlier one; waits while ``depth`` batches are still in the stage."""
        if not self.depth:
            work()
            return
        self._slots.acquire()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ponybot-post-stage", daemon=True)
            self._thread.start()
        self._work.put(work)

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

    def _run(self) -> None:
        while True:
            work = self._work.get()
            try:
                if work is None:
                    return
                work()
            except Exception:  # the work reports its own failures; never lose the thread over one
                log.exception("post-processing failed")
            finally:
                if work is not None:
                    self._slots.release()
                self._work.task_done()
