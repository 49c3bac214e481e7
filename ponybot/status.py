"""What the queue and workers are doing: shared by ``ponybot status``, ``/status`` and the metrics."""

from __future__ import annotations

import time

import redis
from pydantic import BaseModel, Field
from rq import Worker
from rq.worker.base import BaseWorker

from ponybot import keys
from ponybot.queue import generation_queue, job_model, queue_snapshot
from ponybot.schemas import JobEvent
from ponybot.workers import models_online

WINDOW_S = 600


class SafetyState(BaseModel):
    """A worker's image check as loaded: written to Redis at start, shown by ``ponybot status`` and ``/status``."""

    classifiers: list[str]
    missing: dict[str, str] = Field(default_factory=dict)  #: classifier -> why it is not loaded

    def describe(self) -> str:
        if not self.missing:
            return f"image check {'+'.join(self.classifiers)}"
        gone = "; ".join(f"{name}: {why}" for name, why in self.missing.items())
        return f"IMAGE CHECK INCOMPLETE (SFW channels get no images): {gone}"


class WorkerState(BaseModel):
    name: str
    state: str
    job_id: str | None
    safety: SafetyState | None = None


def publish_safety(conn: redis.Redis, worker: str, state: SafetyState, ttl_s: int = 7 * 86400) -> None:
    conn.set(keys.worker_safety(worker), state.model_dump_json(), ex=ttl_s)


def read_safety(conn: redis.Redis, workers: list[str]) -> dict[str, SafetyState]:
    if not workers:
        return {}
    values = conn.mget([keys.worker_safety(name) for name in workers])
    return {name: SafetyState.model_validate_json(value) for name, value in zip(workers, values, strict=True)
            if value is not None}


class ModelStatus(BaseModel):
    """One model's queue: depth, workers holding it, the wait a new job would have."""

    name: str
    queue_depth: int
    workers: int
    done_last_10_min: int
    wait_for_new_job_s: float | None


class Status(BaseModel):
    workers: list[WorkerState]
    models: list[ModelStatus]
    queue_depth: int
    done_last_10_min: int
    failed_last_10_min: int
    images_per_minute: float
    mean_generation_s: float | None
    wait_for_new_job_s: float | None


def collect_status(conn: redis.Redis, models: list[str] | None = None) -> Status:
    """The queues of ``models`` (default: the default model's) and every worker on them."""
    models = models or [keys.DEFAULT_MODEL_NAME]
    queues = {model: generation_queue(conn, model) for model in models}
    found: dict[str, BaseWorker] = {}
    for queue in queues.values():
        found.update((w.name, w) for w in Worker.all(connection=conn, queue=queue))
    workers = [WorkerState(name=w.name, state=str(w.get_state()), job_id=w.get_current_job_id())
               for w in found.values()]
    safety = read_safety(conn, [w.name for w in workers])
    workers = [w.model_copy(update={"safety": safety.get(w.name)}) for w in workers]
    since_ms = int((time.time() - WINDOW_S) * 1000)
    done = failed = images = 0
    done_per_model: dict[str, int] = {}
    entries: list[tuple[bytes, dict[bytes, bytes]]] = conn.xrange(  # type: ignore[assignment]
        keys.EVENTS_STREAM, min=f"{since_ms}-0"
    )
    for _id, fields in entries:
        event = JobEvent.model_validate_json(fields[b"data"])
        if event.kind == "done":
            done += 1
            done_per_model[job_model(event.job)] = done_per_model.get(job_model(event.job), 0) + 1
            images += len(event.images)
        else:
            failed += 1
    recent = [float(v) for model in models for v in conn.lrange(keys.recent_durations(model), 0, -1)]
    snapshot = queue_snapshot(conn, models, positions=False)
    held = models_online(conn)
    per_model = [ModelStatus(name=model, queue_depth=queues[model].count, workers=len(held.get(model, [])),
                             done_last_10_min=done_per_model.get(model, 0), wait_for_new_job_s=None)
                 for model in models]
    per_model = [item.model_copy(update={"wait_for_new_job_s": snapshot.eta(item.queue_depth + 1, item.name)})
                 for item in per_model]
    first = per_model[0]
    return Status(
        workers=sorted(workers, key=lambda w: w.name), models=per_model,
        queue_depth=sum(item.queue_depth for item in per_model), done_last_10_min=done,
        failed_last_10_min=failed, images_per_minute=images / (WINDOW_S / 60),
        mean_generation_s=sum(recent) / len(recent) if recent else None,
        wait_for_new_job_s=first.wait_for_new_job_s,
    )


def describe_status(status: Status) -> str:
    lines = [f"Workers online: {len(status.workers)}"]
    lines += [f"  {w.name}: {w.state}" + (f" (job {w.job_id})" if w.job_id else "")
              + (f", {w.safety.describe()}" if w.safety else "") for w in status.workers]
    lines.append(f"Queue: {status.queue_depth} waiting")
    if len(status.models) > 1:
        for item in status.models:
            eta = f", a new job waits about {item.wait_for_new_job_s:.0f} s" if item.wait_for_new_job_s else ""
            lines.append(f"  {item.name}: {item.queue_depth} waiting, {item.workers} worker(s), "
                         f"{item.done_last_10_min} done in 10 min{eta}")
    lines.append(f"Last 10 min: {status.done_last_10_min} done, {status.failed_last_10_min} failed, "
                 f"{status.images_per_minute:.1f} images/min")
    if status.mean_generation_s is not None:
        lines.append(f"Mean generation time: {status.mean_generation_s:.1f} s")
    wait = status.wait_for_new_job_s
    lines.append(f"A new job now would wait about {wait:.0f} s" if wait is not None else "No timing measured yet")
    return "\n".join(lines)
