"""Batching across members: compatible queued jobs run as one batch, each with its own seeds and event."""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
import redis
from PIL import Image
from rq.job import Job as RQJob

from ponybot import keys
from ponybot.queue import enqueue, generation_queue
from ponybot.schemas import Job, JobEvent, ProgressEvent, build_request
from ponybot.settings import Settings
from worker.runner import GenerationWorker
from worker.runtime import WorkerRuntime


def queue(conn: redis.Redis, settings: Settings, prompt: str, seed: int, **options: Any) -> Job:
    shape = {"steps": 4, "width": 256, "height": 256, **options}
    job = Job.create(build_request(settings.limits, prompt=prompt, seed=seed, **shape))
    enqueue(conn, job, max_queue=20, job_timeout_s=120, result_ttl_s=600, max_attempts=settings.worker.max_attempts)
    return job


def pixels(conn: redis.Redis, key: str | None) -> np.ndarray[Any, Any]:
    assert key is not None
    return np.asarray(Image.open(io.BytesIO(conn.get(key) or b"")), dtype=np.int16)


def test_compatible_jobs_share_a_batch(conn: redis.Redis, settings: Settings, runtime: WorkerRuntime) -> None:
    batched_settings = settings.model_copy(update={"worker": settings.worker.model_copy(
        update={"max_batch": 4, "batch_window_ms": 100, "preview_every": 2})})
    runtime.settings = batched_settings
    pubsub = conn.pubsub()
    pubsub.subscribe(keys.PROGRESS_CHANNEL)
    pubsub.get_message(timeout=1)
    jobs = [queue(conn, settings, f"pony {i}", seed=10 * i, count=1 + i % 2) for i in range(4)]
    odd = queue(conn, settings, "other shape", seed=1, steps=3)
    GenerationWorker(runtime).work(burst=True)

    previews: dict[str, bytes] = {}  # preview_every 2: each batch's first event at step 2, a preview per job
    batches: list[list[str]] = []
    while message := pubsub.get_message(timeout=0.2):
        if message["type"] == "message":
            progress = ProgressEvent.model_validate_json(message["data"])
            batches.append(progress.job_ids)
            previews.update({job_id: preview for job_id in progress.job_ids
                             if (preview := progress.preview(job_id)) is not None})
    # one event names a whole batch (a slow machine may send a batch more than one, an interval apart)
    assert {tuple(ids) for ids in batches} == {tuple(job.id for job in jobs), (odd.id,)}
    assert set(previews) == {job.id for job in [*jobs, odd]}
    assert len(set(previews.values())) == len(previews)  # each job's own latents, not its neighbour's

    events = {e.job.id: e for e in (JobEvent.model_validate_json(f[b"data"])
                                   for _id, f in conn.xrange(keys.EVENTS_STREAM))}
    assert set(events) == {job.id for job in [*jobs, odd]}
    assert all(event.kind == "done" for event in events.values())
    for job in jobs:
        assert [image.seed for image in events[job.id].images] == [job.seed + i for i in range(job.request.count)]
    assert len({events[job.id].generation_s for job in jobs}) == 1  # one batch: one timing
    assert events[odd.id].generation_s != events[jobs[0].id].generation_s
    for job in [*jobs, odd]:
        assert RQJob.fetch(job.id, connection=conn).get_status() == "finished"
    assert generation_queue(conn).started_job_registry.count == 0

    # the same job alone: the same starting noise; batched kernels may round differently
    runtime.settings = settings
    conn.delete(keys.EVENTS_STREAM)
    alone = queue(conn, settings, "pony 1", seed=10, count=2)
    GenerationWorker(runtime).work(burst=True)
    [single] = [JobEvent.model_validate_json(f[b"data"]) for _id, f in conn.xrange(keys.EVENTS_STREAM)]
    assert single.job.id == alone.id
    difference = np.abs(pixels(conn, single.images[1].key) - pixels(conn, events[jobs[1].id].images[1].key))
    assert difference.max() <= 3


def test_claimed_jobs_wait_where_rq_recovers_them(conn: redis.Redis, settings: Settings,
                                                  runtime: WorkerRuntime) -> None:
    """A worker that dies between claiming jobs for a batch and starting them loses none of them."""
    runtime.settings = settings.model_copy(update={"worker": settings.worker.model_copy(
        update={"max_batch": 3, "batch_window_ms": 0})})
    rq_queue = generation_queue(conn)
    leader, first, second = (queue(conn, settings, f"pony {i}", seed=i) for i in range(3))
    conn.hset("rq:job:broken", mapping={"data": b"neither zlib nor json", "status": "queued"})
    conn.lpush(rq_queue.key, "broken")  # an unreadable job in the way is skipped, not fatal
    conn.lrem(rq_queue.key, 1, leader.id)  # as RQ's dequeue took the leader
    worker = GenerationWorker(runtime)
    lead = worker.job_class.fetch(leader.id, connection=conn, serializer=worker.serializer)

    claimed = worker.claim_batch(lead, rq_queue)

    assert [job.id for job, _payload in claimed] == [first.id, second.id]
    assert [payload.request.prompt for _job, payload in claimed] == ["pony 1", "pony 2"]
    assert conn.lrange(rq_queue.key, 0, -1) == [b"broken"]
    assert sorted(conn.lrange(rq_queue.intermediate_queue_key, 0, -1)) == sorted([first.id.encode(),
                                                                                   second.id.encode()])
    # the worker dies here; RQ's maintenance finds the claimed jobs a minute later and retries them
    stuck = rq_queue.intermediate_queue
    for job in (first, second):
        conn.set(stuck.get_first_seen_key(job.id), time.time() - 120)
    stuck.cleanup(worker, rq_queue)
    assert set(conn.lrange(rq_queue.key, 0, -1)) == {b"broken", first.id.encode(), second.id.encode()}
    assert conn.llen(rq_queue.intermediate_queue_key) == 0
