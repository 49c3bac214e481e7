"""Stopping a worker never waits on a library's timer: a warm stop ends within seconds of the last job.

RQ 3.0 reads its command channel (pub/sub) on a thread that blocks up to 60 s per read, and its
``unsubscribe`` first sends UNSUBSCRIBE, then stops that thread and waits for it without a limit. If
the thread reads the UNSUBSCRIBE reply and goes back to its read before it is told to stop (a race
seen in 1 of 12 ``generate --local`` runs), the stop waits the whole 60 s. The tests here force that
interleaving every time: UNSUBSCRIBE returns only once the thread waits in its next read.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.client
from rq.command import send_command

from ponybot import keys
from ponybot.queue import enqueue
from ponybot.schemas import Job, build_request
from ponybot.settings import Settings
from tests.conftest import PATIENCE_S, STOP_BOUND_S, wait_until
from worker.runner import GenerationWorker
from worker.runtime import WorkerRuntime

#: Whether the worker ran a job before it was stopped, for each of the stops in a row.
ROUNDS = [False, True] * 3


def by_signal(stop_signal: signal.Signals) -> Callable[[GenerationWorker, redis.Redis], None]:
    return lambda _worker, _conn: os.kill(os.getpid(), stop_signal)


def by_rq_command(worker: GenerationWorker, conn: redis.Redis) -> None:
    """RQ's ``shutdown`` command on the worker's channel (what ``rq shutdown`` and RQ's dashboards send)."""
    send_command(conn, worker.name, "shutdown")


def frames_of(thread: threading.Thread) -> list[str]:
    """The function names on ``thread``'s stack, innermost first."""
    frame = sys._current_frames().get(thread.ident or -1)
    names = []
    while frame is not None:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return names


def reading(thread: threading.Thread) -> bool:
    """``thread`` waits inside a pub/sub read: ``get_message`` waiting for a subscription, or for data."""
    names = frames_of(thread)
    if "get_message" not in names:
        return False
    below = names[:names.index("get_message")]
    return below[-1:] == ["wait"] or "can_read" in below


@pytest.fixture
def slow_unsubscribe(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[threading.Thread]]:
    """UNSUBSCRIBE returns only when the pub/sub thread (appended to the yielded list) has read its reply
    and waits in its next read: the race that made a stop wait for RQ's 60 s, every time."""
    threads: list[threading.Thread] = []
    original = redis.client.PubSub.unsubscribe

    def unsubscribe(self: redis.client.PubSub, *args: Any) -> Any:
        result = original(self, *args)
        for thread in threads:
            wait_until(lambda thread=thread: not thread.is_alive() or (not self.subscribed and reading(thread)),
                       timeout=PATIENCE_S, what="the pub/sub thread back in its read after UNSUBSCRIBE")
        return result

    monkeypatch.setattr(redis.client.PubSub, "unsubscribe", unsubscribe)
    yield threads


def queue_job(conn: redis.Redis, settings: Settings) -> Job:
    request = build_request(settings.limits, prompt="pinkie pie", width=256, height=256, steps=2)
    job = Job.create(request, quality_tags=True)
    enqueue(conn, job, max_queue=10, result_ttl_s=120)
    return job


def stop_once(conn: redis.Redis, settings: Settings, runtime: WorkerRuntime,
              stop: Callable[[GenerationWorker, redis.Redis], None], after_job: bool,
              threads: list[threading.Thread]) -> float:
    """Start a worker, let it run a job (or none), stop it once it is idle; seconds from the stop to its end."""
    worker = GenerationWorker(runtime)
    events_before = conn.xlen(keys.EVENTS_STREAM)
    if after_job:
        queue_job(conn, settings)
    sent: list[float] = []

    def stopper() -> None:
        def ready() -> bool:
            readers = [thread for thread in threading.enumerate() if reading(thread)]
            if not readers:
                return False
            threads[:] = readers
            done = conn.xlen(keys.EVENTS_STREAM) > events_before if after_job else True
            return done and worker.get_state() == "idle"

        wait_until(ready, what="an idle worker listening on its channel")
        sent.append(time.perf_counter())
        stop(worker, conn)

    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    helper = threading.Thread(target=stopper, daemon=True)
    helper.start()
    try:
        worker.work(burst=False)
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    stopped = time.perf_counter()
    helper.join(PATIENCE_S)
    assert sent, "the worker ended before it was signalled"
    assert not any(thread.is_alive() for thread in threads), "the worker's pub/sub thread outlived it"
    return stopped - sent[0]


@pytest.mark.parametrize("stop", [by_signal(signal.SIGTERM), by_signal(signal.SIGINT), by_rq_command],
                         ids=["SIGTERM", "SIGINT", "rq shutdown command"])
def test_stopping_never_waits_for_rqs_pubsub_read(conn: redis.Redis, settings: Settings, runtime: WorkerRuntime,
                                                  slow_unsubscribe: list[threading.Thread],
                                                  stop: Callable[[GenerationWorker, redis.Redis], None]) -> None:
    """Workers stopped one after another, idle and after a job: each ends within seconds."""
    took = []
    for after_job in ROUNDS:
        seconds = stop_once(conn, settings, runtime, stop, after_job, slow_unsubscribe)
        took.append(seconds)
        assert seconds < STOP_BOUND_S, f"a worker {'after a job' if after_job else 'idle'} took {seconds:.1f} s to stop"
    print(f"\n{len(took)} stops: longest {max(took):.2f} s, mean {sum(took) / len(took):.2f} s")
