"""Nothing lost: killed workers, jobs that always die, Redis restarting, SIGTERM."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
from tests.conftest import PATIENCE_S, ROOT, cli_env, wait_until
from worker.runtime import WorkerRuntime

FAST_RECOVERY = {"PONYBOT_WORKER__HEARTBEAT_S": "1", "PONYBOT_WORKER__MAINTENANCE_S": "1"}


@contextmanager
def workers(redis_url: str | None, model_cache: Path, cwd: Path, *names: str, gates: Path | None = None,
            **extra_env: str) -> Iterator[dict[str, subprocess.Popen[str]]]:
    """Real ``ponybot worker`` processes; with ``gates``, each generates only once ``gates/<name>`` exists."""
    env = cli_env(redis_url, model_cache, **{**FAST_RECOVERY, "PONYBOT_WORKER__CPU_THREADS": "1", **extra_env})
    start = [sys.executable, "-m", "ponybot"]
    if gates is not None:  # a budget, as a gated worker cannot measure its speed (its generations wait)
        env.update(PYTHONPATH=str(ROOT), PONYBOT_WORKER__STEP_BUDGET_S="100")
        start = [sys.executable, "-m", "tests.gated_worker"]
    logs = {name: (cwd / f"{name}.log").open("w") for name in names}  # read them when a test fails
    started = {name: subprocess.Popen([*start, *([str(gates / name)] if gates else []), "worker", "--device", "cpu",
                                       "--name", name], env=env, cwd=cwd, text=True, stderr=logs[name])
               for name in names}
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


def small_job(conn: redis.Redis, settings: Settings, attempts: int) -> Job:
    job = Job.create(build_request(settings.limits, prompt="mid-job", steps=3, width=256, height=256))
    enqueue(conn, job, max_queue=10, result_ttl_s=600, max_attempts=attempts)
    return job


def running_on(conn: redis.Redis, job_id: str) -> str | None:
    job = RQJob.fetch(job_id, connection=conn)
    return job.worker_name if job.get_status() == "started" else None


@pytest.mark.timeout(900)  # worker processes start slowly on a busy 2-core machine
def test_sigkill_mid_job_is_retried_once(conn: redis.Redis, settings: Settings, model_cache: Path, redis_url: str,
                                         tmp_path: Path) -> None:
    with workers(redis_url, model_cache, tmp_path, "w-a", "w-b", gates=tmp_path) as procs:
        job = small_job(conn, settings, attempts=2)
        victim = wait_until(lambda: running_on(conn, job.id), what="a worker taking the job")
        assert victim in procs
        procs[victim].send_signal(signal.SIGKILL)  # mid-job: its generation waits at the gate
        for name in procs:
            (tmp_path / name).touch()  # the survivor may generate
        wait_until(lambda: events_for(conn, job.id), what="the retried job's event")
        wait_until(lambda: RQJob.fetch(job.id, connection=conn).get_status() == "finished", what="RQ's bookkeeping")
    [event] = events_for(conn, job.id)  # once: the dead worker's attempt left none
    assert event.kind == "done"
    assert event.worker != victim


@pytest.mark.timeout(900)  # worker processes start slowly on a busy 2-core machine
def test_job_whose_every_attempt_dies_is_reported(conn: redis.Redis, settings: Settings, model_cache: Path,
                                                  redis_url: str, tmp_path: Path) -> None:
    job = small_job(conn, settings, attempts=1)
    with workers(redis_url, model_cache, tmp_path, "w-doomed", gates=tmp_path) as procs:
        wait_until(lambda: running_on(conn, job.id), what="the worker taking the job")
        procs["w-doomed"].send_signal(signal.SIGKILL)
    with workers(redis_url, model_cache, tmp_path, "w-next"):
        wait_until(lambda: events_for(conn, job.id), what="the dead job's report")
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
    jobs = [Job.create(build_request(settings.limits, prompt=f"pony {i}", steps=2, width=256, height=256))
            for i in range(6)]
    for job in jobs:
        enqueue(conn, job, max_queue=10, result_ttl_s=600)
    try:
        with workers(server.url, model_cache, tmp_path, "w-steady"):
            wait_until(lambda: conn.xlen(keys.EVENTS_STREAM) >= 1, what="a first job done")
            server.stop()
            time.sleep(2)  # Redis stays down a while (the scenario, not a wait for anything)
            server = EmbeddedRedis(data, port=port, persistent=True)
            server.start()
            conn = redis.Redis(port=port)
            wait_until(lambda: all(events_for(conn, job.id) for job in jobs), 2 * PATIENCE_S, "every job's event")
        firsts = {job.id: events_for(conn, job.id)[0] for job in jobs}
        failed = {job_id: (event.error_code, event.error_message) for job_id, event in firsts.items()
                  if event.kind != "done"}
        assert not failed, f"{failed}\n{(tmp_path / 'w-steady.log').read_text()[-6000:]}"
        assert generation_queue(conn).count == 0
    finally:
        server.stop()


def test_images_are_written_once_redis_answers_again(settings: Settings, generator: Any, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Redis stops answering while a job's images are being written: the worker writes them all once it does.

    (redis-py empties a pipeline whose execute() failed, so a retry must build the pipeline again.)
    """
    server = EmbeddedRedis(tmp_path / "redis", port=free_port(), persistent=False)
    admin = connect(server.start())
    try:
        patient = redis.Redis.from_url(server.url, socket_timeout=0.3)  # a write stuck past it fails mid-execute
        runtime = WorkerRuntime(settings, patient, generator, "w-patient")
        job = Job.create(build_request(settings.limits, prompt="pony", steps=2, width=256, height=256, count=2))
        admin.execute_command("CLIENT", "PAUSE", 600_000, "WRITE")  # every write waits, until unpaused below
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(runtime.run_batch, [job])
            wait_until(lambda: any("Redis unavailable" in r.getMessage() for r in caplog.records) or running.done(),
                       what="a write failing while Redis is paused")
            assert not running.done()  # the job waits for Redis, however long that takes
            admin.execute_command("CLIENT", "UNPAUSE")
            [event] = running.result(timeout=PATIENCE_S)
        assert event.kind == "done" and len(event.images) == 2
        assert all(image.key and admin.exists(image.key) for image in event.images)
        [published] = [JobEvent.model_validate_json(f[b"data"]) for _id, f in admin.xrange(keys.EVENTS_STREAM)]
        assert published.job.id == job.id
    finally:
        server.stop()


def test_maintenance_sweep_survives_redis_going_away(settings: Settings, generator: Any, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """RQ lets a lost connection out of its sweep, which ended the worker; the sweep is skipped instead."""
    from worker.runner import GenerationWorker

    server = EmbeddedRedis(tmp_path / "redis", port=free_port(), persistent=False)
    worker = GenerationWorker(WorkerRuntime(settings, connect(server.start()), generator, "w-sweep"))
    server.stop()
    worker.run_maintenance_tasks()  # would raise redis.ConnectionError out of the worker's loop
    assert any("maintenance skipped" in record.getMessage() for record in caplog.records)
    # RQ's loop sets the state between jobs outside its own retry: a failover there ended a worker
    worker.set_state("idle")
    worker.teardown()
    assert any("state 'idle' not written" in record.getMessage() for record in caplog.records)
    assert any("its end not recorded" in record.getMessage() for record in caplog.records)


def test_after_redis_restarts_live_workers_renew_before_the_sweep(settings: Settings, generator: Any,
                                                                   tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Redis away for longer than the heartbeats' time-to-live: every running job's heartbeat has lapsed when it
    comes back, a live worker's too. Another worker's sweep waits out the grace period (worker.heartbeats), so the
    live worker's job is not run twice; a job whose worker really died is re-queued once the grace is over."""
    from rq.registry import StartedJobRegistry

    from worker.heartbeats import Heartbeats, grace_s
    from worker.runner import GenerationWorker

    caplog.set_level(logging.INFO, logger="worker.runner")
    fast = settings.model_copy(update={"worker": settings.worker.model_copy(update={"heartbeat_s": 1})})
    data, port = tmp_path / "redis", free_port()
    server = EmbeddedRedis(data, port=port, persistent=True)
    conn = connect(server.start())
    try:
        sweeper = GenerationWorker(WorkerRuntime(fast, conn, generator, "w-sweeper"))
        busy = GenerationWorker(WorkerRuntime(fast, conn, generator, "w-busy"))
        busy.register_birth()  # as its work loop does first
        queue = generation_queue(conn)
        started: dict[str, tuple[RQJob, Any]] = {}
        for prompt in ("alive", "dead"):
            job = Job.create(build_request(fast.limits, prompt=prompt, steps=2, width=256, height=256))
            enqueue(conn, job, max_queue=10, result_ttl_s=600, max_attempts=2)
            rq_job = queue.fetch_job(job.id)
            assert rq_job is not None
            queue.remove(job.id)
            execution = busy.prepare_execution(rq_job)  # as w-busy takes it (the dead one: as a worker since gone)
            busy.prepare_job_execution(rq_job)
            started[prompt] = (rq_job, execution)
        registry = StartedJobRegistry(queue.name, connection=conn)
        server.stop()
        time.sleep(4)  # down longer than the heartbeats' 3 s time-to-live (the scenario, not a wait)
        server = EmbeddedRedis(data, port=port, persistent=True)
        server.start()
        assert len(registry.get_expired_job_ids()) == 2  # both look abandoned now

        sweeper.clean_registries()  # first after the restart: waits
        assert {RQJob.fetch(j.id, connection=conn).get_status() for j, _e in started.values()} == {"started"}
        assert any("sweep for abandoned jobs waits: 2 job(s) without a recent heartbeat, but Redis started" in
               r.getMessage() for r in caplog.records)

        beats = Heartbeats(busy, [started["alive"]])  # the live worker beats again, every second
        try:
            wait_until(lambda: int(conn.info("server")["uptime_in_seconds"]) >= grace_s(1), what="the grace to pass")
            sweeper.clean_registries()
        finally:
            beats.stop()
        alive, dead = (RQJob.fetch(started[p][0].id, connection=conn) for p in ("alive", "dead"))
        assert alive.get_status() == "started" and alive.worker_name == "w-busy"  # not taken from a live worker
        assert dead.get_status() == "queued" and queue.get_job_ids() == [dead.id]  # the dead worker's: re-queued
    finally:
        server.stop()


def test_a_worker_that_lost_redis_waits_before_sweeping(settings: Settings, generator: Any, tmp_path: Path) -> None:
    """The sweeping worker's own outage counts too (a failover leaves Redis's uptime long)."""
    from worker.heartbeats import RedisWatch

    server = EmbeddedRedis(tmp_path / "redis", port=free_port(), persistent=False)
    conn = connect(server.start())
    try:
        watch = RedisWatch(heartbeat_s=1)
        watch.trouble_at -= 60  # an outage a minute ago...
        wait_until(lambda: int(conn.info("server")["uptime_in_seconds"]) >= watch.grace_s, what="Redis settled")
        assert watch.unsettled(conn) is None  # ...is over: a lapsed heartbeat means a dead worker
        watch.trouble()
        assert (watch.unsettled(conn) or "").startswith("this worker reached Redis again")
    finally:
        server.stop()
