"""Progress by time: one event per batch, at most one per interval, previews without waiting."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import torch

from ponybot.schemas import ProgressEvent
from worker.progress import BatchProgress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(steps: int, step_s: float, interval_s: float, preview_from: int) -> list[tuple[float, ProgressEvent]]:
    clock, sent = Clock(), []
    latents = torch.randn(3, 4, 8, 8)

    def publish(make: Callable[[], ProgressEvent]) -> None:
        sent.append((clock.now, make()))

    progress = BatchProgress(["a", "b"], [0, 2], publish, interval_s=interval_s, preview_from=preview_from,
                             clock=clock)
    for step in range(1, steps + 1):
        clock.now += step_s
        progress.on_step(step, steps, latents)
    assert progress.published == len(sent)
    return sent


def test_at_most_one_publication_per_interval_per_batch() -> None:
    sent = run(steps=100, step_s=0.0625, interval_s=1.5, preview_from=5)  # 6.25 s of steps at 16 it/s
    times = [at for at, _event in sent]
    assert all(later - earlier >= 1.5 for earlier, later in pairwise(times))
    assert len(sent) <= 6.25 / 1.5 + 1
    assert [event.step for _at, event in sent] == [5, 29, 53, 77]  # every 24 steps (1.5 s) from the first preview
    for _at, event in sent:
        assert event.job_ids == ["a", "b"]  # one event for the whole batch
        assert event.preview("a") and event.preview("b")  # each job's own first image


def test_without_previews_the_first_event_comes_at_the_first_step() -> None:
    sent = run(steps=10, step_s=1.0, interval_s=1.5, preview_from=0)
    assert [event.step for _at, event in sent] == [1, 3, 5, 7, 9]
    assert all(event.previews_jpeg == {} for _at, event in sent)


def test_a_short_batch_still_says_once_that_it_runs() -> None:
    sent = run(steps=3, step_s=0.01, interval_s=1.5, preview_from=5)
    assert [(event.step, event.total) for _at, event in sent] == [(3, 3)]
