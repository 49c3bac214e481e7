"""What the queue and workers are doing: shared by ``ponybot status``, ``/status`` and the metrics."""

from __future__ import annotations

import time

import redis
from pydantic import BaseModel
from rq import Worker

from ponybot import keys
from ponybot.queue import estimate_wait, generation_queue
from ponybot.schemas import JobEvent

WINDOW_S = 600


class WorkerState(BaseModel):
    name: str
    state: str
    job_id: str | None


class Status(BaseModel):
    workers: list[WorkerState]
    queue_depth: int
    done_last_10_min: int
    failed_last_10_min: int
    images_per_minute: float
    mean_generation_s: float | None
    wait_for_new_job_s: float | None


def collect_status(conn: redis.Redis) -> Status:
    queue = generation_queue(conn)
    workers = [WorkerState(name=w.name, state=str(w.get_state()), job_id=w.get_current_job_id())
               for w in Worker.all(connection=conn, queue=queue)]
    since_ms = int((time.time() - WINDOW_S) * 1000)
    done = failed = images = 0
    entries: list[tuple[bytes, dict[bytes, bytes]]] = conn.xrange(  # type: ignore[assignment]
        keys.EVENTS_STREAM, min=f"{since_ms}-0"
    )
    for _id, fields in entries:
        event = JobEvent.model_validate_json(fields[b"data"])
        if event.kind == "done":
            done += 1
            images += len(event.images)
        else:
            failed += 1
    recent = [float(v) for v in conn.lrange(keys.RECENT_DURATIONS, 0, -1)]
    depth = queue.count
    return Status(
        workers=sorted(workers, key=lambda w: w.name), queue_depth=depth, done_last_10_min=done,
        failed_last_10_min=failed, images_per_minute=images / (WINDOW_S / 60),
        mean_generation_s=sum(recent) / len(recent) if recent else None,
        wait_for_new_job_s=estimate_wait(conn, depth + 1),
    )


def describe_status(status: Status) -> str:
    lines = [f"Workers online: {len(status.workers)}"]
    lines += [f"  {w.name}: {w.state}" + (f" (job {w.job_id})" if w.job_id else "") for w in status.workers]
    lines.append(f"Queue: {status.queue_depth} waiting")
    lines.append(f"Last 10 min: {status.done_last_10_min} done, {status.failed_last_10_min} failed, "
                 f"{status.images_per_minute:.1f} images/min")
    if status.mean_generation_s is not None:
        lines.append(f"Mean generation time: {status.mean_generation_s:.1f} s")
    wait = status.wait_for_new_job_s
    lines.append(f"A new job now would wait about {wait:.0f} s" if wait is not None else "No timing measured yet")
    return "\n".join(lines)
