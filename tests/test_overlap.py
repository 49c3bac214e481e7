"""The worker's two stages: the GPU stage takes the next job while the post stage finishes the last one,
and still every job is delivered once, in order, across SIGKILL and SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from rq.job import Job as RQJob

from ponybot import keys
from ponybot.queue import enqueue, generation_queue, publish_event
from ponybot.schemas import Job, JobEvent, build_request
from ponybot.settings import Settings
from tests.conftest import ROOT, cli_env, wait_until
from tests.held_worker import HELD, RELEASE
from worker.runner import GenerationWorker
from worker.runtime import WorkerRuntime
from worker.stage import PostStage

FAST_RECOVERY = {"PONYBOT_WORKER__HEARTBEAT_S": "1", "PONYBOT_WORKER__MAINTENANCE_S": "1"}


def queue_job(conn: redis.Redis, settings: Settings, prompt: str = "pony", attempts: int = 2) -> Job:
    job = Job.create(build_request(settings.limits, prompt=prompt, steps=2, width=256, height=256, count=2))
    enqueue(conn, job, max_queue=10, result_ttl_s=600, max_attempts=attempts)
    return job


def events(conn: redis.Redis) -> list[JobEvent]:
    return [JobEvent.model_validate_json(fields[b"data"]) for _id, fields in conn.xrange(keys.EVENTS_STREAM)]


@contextmanager
def process(args: list[str], env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[str]]:
    started = subprocess.Popen([sys.executable, *args], env=env, cwd=cwd, text=True, stderr=subprocess.DEVNULL)
    try:
        yield started
    finally:
        if started.poll() is None:
            started.kill()
        started.wait()


def test_killed_between_generation_and_post_processing_delivers_once(
        conn: redis.Redis, settings: Settings, model_cache: Path, redis_url: str, tmp_path: Path) -> None:
    env = cli_env(redis_url, model_cache, **FAST_RECOVERY)
    job = queue_job(conn, settings)
    with process([str(ROOT / "tests" / "held_worker.py"), "w-held"], env, tmp_path) as held:
        wait_until(lambda: conn.llen(HELD) == 1)  # generated; its post stage holds the images
        held.send_signal(signal.SIGKILL)
        held.wait()
    assert events(conn) == []
    assert RQJob.fetch(job.id, connection=conn).get_status() == "started"  # RQ never heard it finished
    with process(["-m", "ponybot", "worker", "--device", "cpu", "--name", "w-next"], env, tmp_path):
        wait_until(lambda: RQJob.fetch(job.id, connection=conn).get_status() == "finished")
    rq_queue = generation_queue(conn)
    assert rq_queue.count == 0 and rq_queue.started_job_registry.count == 0  # nothing left to run it again
    [event] = events(conn)
    assert event.kind == "done" and event.job.id == job.id and event.worker == "w-next"
    assert len(event.images) == 2
    assert all(image.key and conn.exists(image.key) for image in event.images)


def test_sigterm_finishes_the_post_stage_before_exit(conn: redis.Redis, settings: Settings, model_cache: Path,
                                                     redis_url: str, tmp_path: Path) -> None:
    job = queue_job(conn, settings)
    with process([str(ROOT / "tests" / "held_worker.py"), "w-term"], cli_env(redis_url, model_cache),
                 tmp_path) as worker:
        wait_until(lambda: conn.llen(HELD) == 1)
        worker.send_signal(signal.SIGTERM)  # the main thread is idle, waiting for the next job
        conn.set(RELEASE, 1)
        assert worker.wait(60) == 0
    [event] = events(conn)
    assert event.kind == "done" and event.job.id == job.id
    assert RQJob.fetch(job.id, connection=conn).get_status() == "finished"


def test_a_job_whose_event_is_out_is_not_run_again(conn: redis.Redis, settings: Settings,
                                                   runtime: WorkerRuntime) -> None:
    """The worker died after publishing the event but before RQ heard: the retry finishes it, posts nothing."""
    job = queue_job(conn, settings)
    first = JobEvent(kind="done", job=job, worker="the-dead-one")
    assert publish_event(conn, first) is not None
    assert publish_event(conn, first) is None  # a second event for the same job is refused at the source
    GenerationWorker(runtime).work(burst=True)
    assert [event.worker for event in events(conn)] == ["the-dead-one"]
    assert RQJob.fetch(job.id, connection=conn).get_status() == "finished"
    assert not conn.keys(keys.image(job.id, 0))  # it was not generated again


@pytest.mark.parametrize("depth", [0, 2])
def test_events_go_out_in_the_order_jobs_ran(conn: redis.Redis, settings: Settings, runtime: WorkerRuntime,
                                            depth: int) -> None:
    runtime.settings = settings.model_copy(update={"worker": settings.worker.model_copy(
        update={"overlap_depth": depth})})
    jobs = [queue_job(conn, settings, prompt=f"pony {i}") for i in range(3)]
    GenerationWorker(runtime).work(burst=True)
    assert [event.job.id for event in events(conn)] == [job.id for job in jobs]
    assert all(event.kind == "done" and len(event.images) == 2 for event in events(conn))
    assert all(RQJob.fetch(job.id, connection=conn).get_status() == "finished" for job in jobs)


def test_post_stage_runs_in_order_and_bounds_its_depth() -> None:
    stage = PostStage(depth=1)
    order: list[int] = []
    gate = threading.Event()

    def work(index: int) -> None:
        assert gate.wait(60)
        order.append(index)

    stage.submit(lambda: work(0))
    releaser = threading.Timer(0.2, gate.set)  # from another thread: this one is about to block
    releaser.start()
    stage.submit(lambda: work(1))  # depth 1: waits until the first batch is done
    assert order == [0]
    stage.submit(lambda: work(2))
    stage.close()
    releaser.join()
    assert order == [0, 1, 2]


def test_post_processing_past_its_limit_is_reported_once() -> None:
    """A hung post stage (a classifier that never returns) is reported to the worker, which then exits so the
    batch's jobs are retried; work within its limit, or without one, is not."""
    stuck: list[tuple[str, float]] = []
    stage = PostStage(depth=1, on_stuck=lambda what, elapsed: stuck.append((what, elapsed)))
    release = threading.Event()
    stage.submit(lambda: None, what="job=quick", limit_s=0.5)
    stage.submit(lambda: release.wait(120), what="job=slow", limit_s=0.5)
    wait_until(lambda: stuck, what="the watchdog's report")
    release.set()
    stage.submit(lambda: release.wait(120), what="job=unlimited")  # no limit: never reported
    stage.close()
    assert [what for what, _elapsed in stuck] == ["job=slow"] and stuck[0][1] > 0.5


def test_the_worker_exits_when_its_post_stage_hangs(runtime: WorkerRuntime) -> None:
    from worker.runner import EXIT_POST_STUCK

    worker = GenerationWorker(runtime)
    assert worker.stage.on_stuck == worker._post_stuck and EXIT_POST_STUCK not in (0, 2, 3)  # up restarts it
