"""Queue positions from tickets (ponybot.tickets) agree with the queue itself whatever happened to it:
a cancellation or a batch claim in the middle, a job sent back to the front, one queued without a ticket."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from rq.job import Job as RQJob, JobStatus

from ponybot import keys
from ponybot.queue import cancel_job, enqueue, generation_queue, queue_snapshot
from ponybot.schemas import Job, build_request
from ponybot.settings import Settings
from ponybot.tickets import take_out

QUEUED = 8


def take_first(conn: redis.Redis) -> str:
    """What a worker's dequeue does: the first job leaves the list and is started."""
    queue = generation_queue(conn)
    job_id = conn.lpop(queue.key).decode()  # type: ignore[union-attr]
    RQJob.fetch(job_id, connection=conn, serializer=queue.serializer).set_status(JobStatus.STARTED)
    return job_id


def back_to_front(conn: redis.Redis) -> None:
    """A job whose worker died goes back to the front (RQ's retry with enqueue_at_front), its ticket unchanged."""
    queue = generation_queue(conn)
    job_id = take_first(conn)
    queue.enqueue_job(RQJob.fetch(job_id, connection=conn, serializer=queue.serializer), at_front=True)


def claim_for_batch(conn: redis.Redis, job_id: str) -> None:
    queue = generation_queue(conn)
    assert take_out(conn, queue.name, queue.key, job_id, into=queue.intermediate_queue_key)
    assert not take_out(conn, queue.name, queue.key, job_id)  # taken once only


CHANGES: dict[str, Callable[[redis.Redis, list[Job]], object]] = {
    "nothing": lambda conn, jobs: None,
    "taken by a worker": lambda conn, jobs: take_first(conn),
    "cancelled in the middle": lambda conn, jobs: [cancel_job(conn, jobs[3].id), cancel_job(conn, jobs[5].id)],
    "cancelled last": lambda conn, jobs: cancel_job(conn, jobs[-1].id),
    "claimed into a batch": lambda conn, jobs: claim_for_batch(conn, jobs[4].id),
    "sent back to the front": lambda conn, jobs: back_to_front(conn),
    "queued without a ticket": lambda conn, jobs: conn.delete(keys.queue_ticket(jobs[2].id)),
    "all at once": lambda conn, jobs: [take_first(conn), cancel_job(conn, jobs[6].id), back_to_front(conn),
                                       claim_for_batch(conn, jobs[3].id)],
}


@pytest.mark.parametrize("scan_factor", [0, 4], ids=["by tickets", "short queue read whole"])
@pytest.mark.parametrize("change", list(CHANGES))
def test_positions_agree_with_the_queue(conn: redis.Redis, settings: Settings, change: str, scan_factor: int) -> None:
    jobs = [Job.create(build_request(settings.limits, prompt=f"pony {i}")) for i in range(QUEUED)]
    told = [enqueue(conn, job, max_queue=100, result_ttl_s=60) for job in jobs]
    assert told == list(range(1, QUEUED + 1))
    CHANGES[change](conn, jobs)
    later = Job.create(build_request(settings.limits, prompt="later"))  # queued after the change
    told_later = enqueue(conn, later, max_queue=100, result_ttl_s=60)

    waiting = [raw.decode() for raw in conn.lrange(generation_queue(conn).key, 0, -1)]
    assert told_later == len(waiting) and waiting[-1] == later.id
    snapshot = queue_snapshot(conn, jobs=[*jobs, later], scan_factor=scan_factor)
    assert snapshot.positions == {job_id: i + 1 for i, job_id in enumerate(waiting)}


def test_holes_no_one_can_be_behind_are_forgotten(conn: redis.Redis, settings: Settings) -> None:
    jobs = [Job.create(build_request(settings.limits, prompt=f"pony {i}")) for i in range(QUEUED)]
    for job in jobs:
        enqueue(conn, job, max_queue=100, result_ttl_s=60)
    for job in jobs[:-1]:
        cancel_job(conn, job.id)
    assert conn.zcard(keys.queue_holes(generation_queue(conn).name)) == QUEUED - 1
    take_first(conn)
    fresh = Job.create(build_request(settings.limits, prompt="fresh"))
    enqueue(conn, fresh, max_queue=100, result_ttl_s=60)
    gone = Job.create(build_request(settings.limits, prompt="gone"))
    enqueue(conn, gone, max_queue=100, result_ttl_s=60)
    cancel_job(conn, gone.id)
    # only the newest hole (behind the fresh job) can still matter to anyone
    assert conn.zcard(keys.queue_holes(generation_queue(conn).name)) == 1
    assert queue_snapshot(conn, jobs=[fresh], scan_factor=0).positions == {fresh.id: 1}
