"""What the queue and workers are doing: shared by ``ponybot status``, ``/status`` and the metrics."""

from __future__ import annotations

import time
from typing import Any, Protocol

import redis
from pydantic import BaseModel, Field
from rq import Worker
from rq.worker.base import BaseWorker

from ponybot import keys
from ponybot.errors import N_
from ponybot.queue import generation_queue, job_model, queue_snapshot
from ponybot.schemas import JobEvent
from ponybot.workers import models_online

WINDOW_S = 600


class Translate(Protocol):
    """``message`` (a template marked with ``N_``) in the reader's language, its ``{name}`` fields filled in."""

    def __call__(self, message: str, /, **params: Any) -> str: ...


def plain(message: str, /, **params: Any) -> str:
    """English: the template as written."""
    return message.format(**params) if params else message


class SafetyState(BaseModel):
    """A worker's image check as loaded: written to Redis at start, shown by ``ponybot status`` and ``/status``."""

    classifiers: list[str]
    missing: dict[str, str] = Field(default_factory=dict)  #: classifier -> why it is not loaded
    #: SFW channels get no images (a required classifier is missing, or none is loaded); the default is what a
    #: worker from before ``safety.required`` meant by anything missing
    withholding: bool = True

    def describe(self, translate: Translate | None = None) -> str:
        say = translate or plain
        classifiers = "+".join(self.classifiers)
        if not self.missing:
            return say(N_("image check {classifiers}"), classifiers=classifiers)
        gone = "; ".join(f"{name}: {why}" for name, why in self.missing.items())
        if not self.withholding:
            return say(N_("IMAGE CHECK INCOMPLETE (SFW channels get the images {classifiers} pass): {missing}"),
                       classifiers=classifiers, missing=gone)
        return say(N_("IMAGE CHECK INCOMPLETE (SFW channels get no images): {missing}"), missing=gone)


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
    entries: list[tuple[bytes, dict[bytes, bytes]]] = conn.xrange(  # type: ignore[assignment, unused-ignore]
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
    snapshot = queue_snapshot(conn, models)
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


def describe_status(status: Status, translate: Translate | None = None) -> str:
    """The status as lines of text, in English or through ``translate`` (the bot's, in the member's language)."""
    say = translate or plain
    lines = [say(N_("Workers online: {count}"), count=len(status.workers))]
    for worker in status.workers:
        line = f"  {worker.name}: {worker.state}"
        if worker.job_id:
            line += " " + say(N_("(job {job_id})"), job_id=worker.job_id)
        if worker.safety:
            line += f", {worker.safety.describe(translate)}"
        lines.append(line)
    lines.append(say(N_("Queue: {count} waiting"), count=status.queue_depth))
    if len(status.models) > 1:
        for item in status.models:
            line = "  " + say(N_("{model}: {waiting} waiting, {workers} worker(s), {done} done in 10 min"),
                              model=item.name, waiting=item.queue_depth, workers=item.workers,
                              done=item.done_last_10_min)
            if item.wait_for_new_job_s:
                line += say(N_(", a new job waits about {seconds} s"), seconds=f"{item.wait_for_new_job_s:.0f}")
            lines.append(line)
    lines.append(say(N_("Last 10 min: {done} done, {failed} failed, {rate} images/min"),
                     done=status.done_last_10_min, failed=status.failed_last_10_min,
                     rate=f"{status.images_per_minute:.1f}"))
    if status.mean_generation_s is not None:
        lines.append(say(N_("Mean generation time: {seconds} s"), seconds=f"{status.mean_generation_s:.1f}"))
    wait = status.wait_for_new_job_s
    lines.append(say(N_("A new job now would wait about {seconds} s"), seconds=f"{wait:.0f}") if wait is not None
                 else say(N_("No timing measured yet")))
    return "\n".join(lines)
