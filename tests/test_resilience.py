"""Nothing lost: killed workers, jobs that always die, Redis restarting, SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.job import Job as RQJob

from ponybot import keys
from ponybot.queue import connect, enqueue, generation_queue
from ponybot.redis_server import EmbeddedRedis, free_port
from ponybot.schemas import Job, JobEvent, build_request
from ponybot.settings import Settings
from tests.conftest import cli_env
from worker.runtime import WorkerRuntime

FAST_RECOVERY = {"PONYBOT_WORKER__HEARTBEAT_S": "1", "PONYBOT_WORKER__MAINTENANCE_S": "1"}


@contextmanager
def workers(redis_url: str | None, model_cache: Path, cwd: Path, *names: str,
            **extra_env: str) -> Iterator[dict[str, subprocess.Popen[str]]]:
    env = cli_env(redis_url, model_cache, **{**FAST_RECOVERY, "PONYBOT_WORKER__CPU_THREADS": "1", **extra_env})
    logs = {name: (cwd / f"{name}.log").open("w") for name in names}  # read them when a test fails
    started = {name: subprocess.Popen([sys.executable, "-m", "ponybot", "worker", "--device", "cpu", "--name", name],
                                      env=env, cwd=cwd, text=True, stderr=logs[name]) for name in names}
    try:
        yield started
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
            process.wait()
        for log in logs.values():
            log.close()


def events_for(conn: redis.Redis, job_id: str) -> list[JobEvent]:
    found = [JobEvent.model_validate_json(f[b"data"]) for _id, f in conn.xrange(keys.EVENTS_STREAM)]
    return [event for event in found if event.job.id == job_id]


def wait_until(condition: object, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.2)
    raise TimeoutError("condition never held")


def long_job(conn: redis.Redis, settings: Settings, attempts: int, steps: int = 60) -> Job:
    job = Job.create(build_request(settings.limits, prompt="long", steps=min(steps, 50), width=512, height=512))
    enqueue(conn, job, max_queue=10, job_timeout_s=300, result_ttl_s=600, max_attempts=attempts)
    return job


def running_on(conn: redis.Redis, job_id: str) -> str | None:
    job = RQJob.fetch(job_id, connection=conn)
    return job.worker_name if job.get_status() == "started" else None


@pytest.mark.timeout(900)  # worker processes start slowly on a busy 2-core machine
def test_sigkill_mid_job_is_retried_once(conn: redis.Redis, settings: Settings, model_cache: Path, redis_url: str,
                                         tmp_path: Path) -> None:
    with workers(redis_url, model_cache, tmp_path, "w-a", "w-b") as procs:
        job = long_job(conn, settings, attempts=2)
        wait_until(lambda: running_on(conn, job.id))
        victim = running_on(conn, job.id)
        assert victim in procs
        procs[victim].send_signal(signal.SIGKILL)
        wait_until(lambda: events_for(conn, job.id), timeout=400)
        time.sleep(2)
    [event] = events_for(conn, job.id)
    assert event.kind == "done"
    assert event.worker != victim


@pytest.mark.timeout(900)  # worker processes start slowly on a busy 2-core machine
def test_job_whose_every_attempt_dies_is_reported(conn: redis.Redis, settings: Settings, model_cache: Path,
                                                  redis_url: str, tmp_path: Path) -> None:
    job = long_job(conn, settings, attempts=1)
    with workers(redis_url, model_cache, tmp_path, "w-doomed") as procs:
        wait_until(lambda: running_on(conn, job.id))
        procs["w-doomed"].send_signal(signal.SIGKILL)
    with workers(redis_url, model_cache, tmp_path, "w-next"):
        wait_until(lambda: events_for(conn, job.id), timeout=400)
    [event] = events_for(conn, job.id)
    assert event.kind == "failed" and event.error_code == "worker_died"
    assert event.attempts == 1 and "after 1 attempt(s)" in (event.error_message or "")
    from bot import messages

    assert "stopped while making it (tried once)" in messages.failed(event, mention=False)


@pytest.mark.timeout(900)  # worker processes start slowly on a busy 2-core machine
def test_redis_restart_loses_no_job(settings: Settings, model_cache: Path, tmp_path: Path) -> None:
    data, port = tmp_path / "redis", free_port()
    server = EmbeddedRedis(data, port=port, persistent=True)
    server.start()
    conn = redis.Redis(port=port)
    jobs = [Job.create(build_request(settings.limits, prompt=f"pony {i}", steps=8, width=256, height=256))
            for i in range(6)]
    for job in jobs:
        enqueue(conn, job, max_queue=10, job_timeout_s=120, result_ttl_s=600)
    try:
        with workers(server.url, model_cache, tmp_path, "w-steady"):
            wait_until(lambda: conn.xlen(keys.EVENTS_STREAM) >= 1)
            server.stop()
            time.sleep(2)
            server = EmbeddedRedis(data, port=port, persistent=True)
            server.start()
            conn = redis.Redis(port=port)
            wait_until(lambda: all(events_for(conn, job.id) for job in jobs), timeout=120)
        assert all(events_for(conn, job.id)[0].kind == "done" for job in jobs)
        assert generation_queue(conn).count == 0
    finally:
        server.stop()


def test_images_are_written_once_redis_answers_again(settings: Settings, generator: Any, tmp_path: Path) -> None:
    """Redis stops answering while a job's images are being written: the worker writes them all once it does.

    (redis-py empties a pipeline whose execute() failed, so a retry must build the pipeline again.)
    """
    server = EmbeddedRedis(tmp_path / "redis", port=free_port(), persistent=False)
    admin = connect(server.start())
    try:
        patient = redis.Redis.from_url(server.url, socket_timeout=0.3)  # a write stuck past it fails mid-execute
        runtime = WorkerRuntime(settings, patient, generator, "w-patient")
        job = Job.create(build_request(settings.limits, prompt="pony", steps=2, width=256, height=256, count=2))
        admin.execute_command("CLIENT", "PAUSE", 2500, "WRITE")  # every write waits 2.5 s: well past 0.3 s
        started = time.monotonic()
        [event] = runtime.run_batch([job])
        assert time.monotonic() - started >= 2.5  # the writes did wait for Redis
        assert event.kind == "done" and len(event.images) == 2
        assert all(image.key and admin.exists(image.key) for image in event.images)
        [published] = [JobEvent.model_validate_json(f[b"data"]) for _id, f in admin.xrange(keys.EVENTS_STREAM)]
        assert published.job.id == job.id
    finally:
        server.stop()
