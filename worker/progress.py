"""Progress of one batch, published by time: one event per batch, previews copied without a GPU sync.

The bot edits a job's message at most once per ``discord.progress_edit_interval_s``; publishing
more often only costs Redis round trips and, for previews, GPU syncs. So a batch publishes its
first event once it reaches ``preview_from`` steps (step 1 without previews) and then at most once
per interval, one event naming every job in the batch. A preview's latents go to pinned host
memory with a non-blocking copy and a CUDA event; the event is published at a later step, once
that event has completed, so the denoising loop never waits for it. On the CPU the copy is a plain one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ponybot.schemas import ProgressEvent
from worker.png import latent_preview

log = logging.getLogger(__name__)


@dataclass
class PendingPreview:
    """Latents on their way to the host: published once ``ready`` has completed."""

    step: int
    total: int
    host: torch.Tensor  #: the batch's latents
    ready: torch.cuda.Event | None  #: None on the CPU: the copy is already done

    def done(self) -> bool:
        return self.ready is None or bool(self.ready.query())  # type: ignore[no-untyped-call, unused-ignore]


def copy_to_host(latents: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """``latents`` in host memory: on CUDA a non-blocking copy to pinned memory and the event that ends it."""
    if latents.device.type != "cuda":
        return latents.detach().clone(), None
    host = torch.empty(latents.shape, dtype=latents.dtype, pin_memory=True)
    host.copy_(latents.detach(), non_blocking=True)
    ready = torch.cuda.Event()  # type: ignore[no-untyped-call, unused-ignore]
    ready.record()
    return host, ready


class BatchProgress:
    """The step callback of one batch: at most one published event per ``interval_s``.

    ``publish`` is given a function that builds the event (with its JPEG previews), so the caller
    can build and send it on another thread.
    """

    def __init__(self, job_ids: list[str], offsets: list[int], publish: Callable[[Callable[[], ProgressEvent]], None],
                 *,
                 interval_s: float, preview_from: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.job_ids = job_ids
        self.offsets = offsets  #: each job's first image in the batch's latents
        self.publish = publish
        self.interval_s = interval_s
        self.preview_from = preview_from  #: 0: no previews
        self.clock = clock
        self.last: float | None = None  #: when the last event was started
        self.pending: PendingPreview | None = None
        self.published = 0

    def on_step(self, step: int, total: int, latents: torch.Tensor) -> None:
        self.flush()
        if not self.due(step, total):
            return
        self.last = self.clock()
        if not self.preview_from:
            self._send(lambda: ProgressEvent.create(self.job_ids, step, total))
            return
        if self.pending is not None:  # the previous copy has not landed yet: skip this tick, never wait
            return
        host, ready = copy_to_host(latents)  # the whole batch (a few KiB an image): no index on the device
        self.pending = PendingPreview(step, total, host, ready)
        self.flush()

    def due(self, step: int, total: int) -> bool:
        if self.last is None:
            return step >= min(self.preview_from or 1, total)
        return step < total and self.clock() - self.last >= self.interval_s

    def flush(self) -> None:
        """Publish the pending preview if its copy has landed (never waits for the GPU)."""
        pending = self.pending
        if pending is None or not pending.done():
            return
        self.pending = None

        def event() -> ProgressEvent:  # the JPEGs are made where the event is published, off this thread
            previews = {job_id: latent_preview(pending.host[offset])
                        for job_id, offset in zip(self.job_ids, self.offsets, strict=True)}
            return ProgressEvent.create(self.job_ids, pending.step, pending.total, previews)

        self._send(event)

    def _send(self, make: Callable[[], ProgressEvent]) -> None:
        """Hand the event to ``publish`` (which builds it with ``make`` where it likes: a pool thread)."""
        self.published += 1
        self.publish(make)
