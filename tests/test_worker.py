"""The worker on a real Redis: results, events, progress, refusal of forged jobs, SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from rq.job import Job as RQJob
from rq.queue import Queue
from rq.serializers import JSONSerializer

from ponybot import keys
from ponybot.legacy import move_legacy_jobs
from ponybot.parameters import parse_parameters
from ponybot.queue import enqueue, generation_queue, last_event_id, wait_for_event
from ponybot.schemas import Job, JobEvent, ProgressEvent, build_request
from ponybot.settings import Settings
from tests.conftest import PATIENCE_S, ROOT, STOP_BOUND_S, cli_env, wait_until
from worker.png import read_parameters
from worker.runner import GenerationWorker, run_worker
from worker.runtime import WorkerRuntime


def queue_job(conn: redis.Redis, settings: Settings, **options: Any) -> Job:
    request = build_request(settings.limits, **{"prompt": "pinkie pie", "width": 256, "height": 256,
                                                "steps": 3, **options})
    job = Job.create(request, quality_tags=True)
    enqueue(conn, job, max_queue=10, result_ttl_s=120)
    return job


def events(conn: redis.Redis) -> list[JobEvent]:
    return [JobEvent.model_validate_json(fields[b"data"]) for _id, fields in conn.xrange(keys.EVENTS_STREAM)]


def test_job_to_pngs_event_and_progress(conn: redis.Redis, settings: Settings, runtime: WorkerRuntime) -> None:
    pubsub = conn.pubsub()
    pubsub.subscribe(keys.PROGRESS_CHANNEL)
    pubsub.get_message(timeout=1)
    job = queue_job(conn, settings, count=2, seed=7, negative_prompt="blurry")
    GenerationWorker(runtime).work(burst=True)

    [event] = events(conn)
    assert event.kind == "done" and event.job.id == job.id
    assert [image.seed for image in event.images] == [7, 8]
    for image in event.images:
        assert image.key is not None
        assert 0 < conn.ttl(image.key) <= settings.worker.result_ttl_s
        parameters = parse_parameters(read_parameters(conn.get(image.key) or b"") or "")
        assert parameters["prompt"] == "derpibooru_p_95, pinkie pie"
        assert parameters["negative_prompt"] == "blurry, derpibooru_p_low"
        assert parameters["Seed"] == str(image.seed)
        assert parameters["Steps"] == "3" and parameters["Size"] == "256x256"
        assert parameters["Clip skip"] == "2" and parameters["Model"] == "tiny" and parameters["Job"] == job.id
    progress = []
    while message := pubsub.get_message(timeout=0.2):
        if message["type"] == "message":
            progress.append(ProgressEvent.model_validate_json(message["data"]))
    # well inside one progress interval: one event, at the first step with a preview (preview_every 5 > 3 steps)
    assert [(event.job_ids, event.step, event.total) for event in progress] == [([job.id], 3, 3)]
    assert progress[0].preview(job.id) is not None


def test_forged_job_never_runs(conn: redis.Redis, runtime: WorkerRuntime, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    queue = generation_queue(conn)
    forged = queue.enqueue("os.system", f"touch {marker}")
    with_callback = queue.enqueue(keys.GENERATE_FUNC, "{}", on_failure="os.getcwd")
    GenerationWorker(runtime).work(burst=True)
    assert not marker.exists()
    forged.refresh()
    assert forged.is_failed
    assert "ForgedJobError" in (forged.latest_result().exc_string or "")
    with_callback.refresh()
    assert with_callback.is_failed


def test_no_pickle_on_the_queue(conn: redis.Redis, settings: Settings) -> None:
    job = queue_job(conn, settings)
    stored = conn.hget(f"rq:job:{job.id}", "data")
    assert stored is not None
    func, _instance, args, _kwargs = json.loads(zlib.decompress(stored))  # RQ compresses, JSON inside
    assert func == keys.GENERATE_FUNC
    assert Job.model_validate_json(args[0]) == job


def test_out_of_memory_becomes_failed_event(conn: redis.Redis, settings: Settings, runtime: WorkerRuntime) -> None:
    class OutOfMemory:  # a GPU's OOM cannot happen on this CPU: raise it where the pipeline would
        model = runtime.generator.model

        def generate_deferred(self, *args: Any, **kwargs: Any) -> Any:
            raise torch.OutOfMemoryError("CUDA out of memory")

    job = queue_job(conn, settings)
    GenerationWorker(WorkerRuntime(settings, conn, OutOfMemory(), "oom")).work(burst=True)  # type: ignore[arg-type]
    [event] = events(conn)
    assert event.kind == "failed" and event.job.id == job.id
    assert event.error_code == "out_of_memory"
    assert "smaller size" in (event.error_message or "")


def test_sigterm_finishes_the_current_job(conn: redis.Redis, settings: Settings, model_cache: Path,
                                          redis_url: str, tmp_path: Path) -> None:
    after = last_event_id(conn)
    job = queue_job(conn, settings, steps=4)
    gate = tmp_path / "gate"
    env = cli_env(redis_url, model_cache, PYTHONPATH=str(ROOT), PONYBOT_WORKER__STEP_BUDGET_S="100")
    worker = subprocess.Popen([sys.executable, "-m", "tests.gated_worker", str(gate), "worker", "--device", "cpu"],
                              env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: RQJob.fetch(job.id, connection=conn).get_status() == "started", what="the job started")
        worker.send_signal(signal.SIGTERM)  # mid-job: its generation waits at the gate
        gate.touch()
        event = wait_for_event(conn, job.id, after=after, timeout=PATIENCE_S, no_worker_timeout=PATIENCE_S)
        done_at = time.monotonic()
        assert event.kind == "done"
        assert len(event.images) == 1
        assert worker.wait(PATIENCE_S) == 0
        assert time.monotonic() - done_at < STOP_BOUND_S  # drained: it exits within seconds of its job
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_worker_writes_its_own_key_sparingly(conn: redis.Redis, runtime: WorkerRuntime,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """RQ beats the worker key three times a job; ours keeps one a second and skips unchanged states."""
    worker = GenerationWorker(runtime)
    worker.register_birth()
    hsets = lambda: conn.info("commandstats")["cmdstat_hset"]["calls"]  # noqa: E731
    worker.heartbeat()
    first = conn.hget(worker.key, "last_heartbeat")
    before = hsets()
    worker.heartbeat()
    worker.set_state("idle")
    worker.set_state("idle")
    assert hsets() - before == 1  # the second beat is skipped, one state write
    assert conn.hget(worker.key, "state") == b"idle"
    assert conn.ttl(worker.key) > 0
    monkeypatch.setattr(GenerationWorker, "WORKER_BEAT_EVERY_S", 0.0)
    time.sleep(0.01)
    worker.heartbeat()
    assert conn.hget(worker.key, "last_heartbeat") != first
    worker.register_death()


def test_a_job_left_in_the_old_queue_by_an_upgrade_is_drawn(conn: redis.Redis, settings: Settings,
                                                             runtime: WorkerRuntime) -> None:
    """Before every model had its own queue, the default model's jobs waited in ``ponybot-generate``: a worker
    of this version moves them to their model's queue when it starts, once, and draws them."""
    assert keys.DEFAULT_MODEL_NAME in runtime.generators
    job = Job.create(build_request(settings.limits, prompt="pinkie pie", width=256, height=256, steps=2))
    legacy = Queue(keys.LEGACY_GENERATE_QUEUE, connection=conn, serializer=JSONSerializer)
    legacy.enqueue(keys.GENERATE_FUNC, job.model_dump_json(), job_id=job.id, job_timeout=-1, result_ttl=120)
    conn.set(keys.job_record(job.id), job.model_dump_json(), ex=120)
    assert legacy.count == 1 and generation_queue(conn).count == 0

    run_worker(runtime, burst=True)

    [event] = events(conn)
    assert event.kind == "done" and event.job.id == job.id
    assert legacy.count == 0 and generation_queue(conn).count == 0
    assert RQJob.fetch(job.id, connection=conn, serializer=JSONSerializer).origin == generation_queue(conn).name
    assert move_legacy_jobs(conn) == 0
