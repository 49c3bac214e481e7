"""The queue as members see it: positions and waits, read once per tick however long the queue is."""

from __future__ import annotations

import redis

from ponybot import keys
from ponybot.queue import enqueue, estimate_wait, queue_position, queue_snapshot
from ponybot.schemas import Job, build_request
from ponybot.settings import Settings


def fill(conn: redis.Redis, settings: Settings, count: int) -> list[Job]:
    jobs = [Job.create(build_request(settings.limits, prompt=f"pony {i}")) for i in range(count)]
    for job in jobs:
        enqueue(conn, job, max_queue=1000, result_ttl_s=60)
    return jobs


def commands(conn: redis.Redis) -> int:
    return int(conn.info("stats")["total_commands_processed"])


def test_snapshot_positions_and_eta_agree_with_the_one_job_answers(conn: redis.Redis, settings: Settings) -> None:
    jobs = fill(conn, settings, 5)
    assert queue_snapshot(conn).eta(3) is None  # no generation finished yet: no ETA to give
    conn.lpush(keys.RECENT_DURATIONS, "4.0", "2.0")

    snapshot = queue_snapshot(conn, jobs=jobs)

    assert snapshot.positions == {job.id: queue_position(conn, job.id) for job in jobs}
    assert [snapshot.positions[job.id] for job in jobs] == [1, 2, 3, 4, 5]
    assert snapshot.per_job_s == {"pony-v4": 3.0} and snapshot.workers == {"pony-v4": 0}  # none: counted as one
    assert snapshot.eta(5) == estimate_wait(conn, 5) == 15.0


def test_snapshot_costs_the_same_for_a_long_queue(conn: redis.Redis, settings: Settings) -> None:
    """The positions come from tickets, never from reading the queue: the same commands (those the script runs
    included: a guess that missed would add an LPOS) for the deepest jobs of a ten times longer queue."""
    queued = fill(conn, settings, 30)
    queue_snapshot(conn, jobs=queued[-3:])  # the script is loaded once
    before = commands(conn)
    short = queue_snapshot(conn, jobs=queued[-3:])
    spent = commands(conn) - before - 1  # the INFO call itself counts
    queued += fill(conn, settings, 270)
    before = commands(conn)
    long = queue_snapshot(conn, jobs=queued[-3:])
    assert commands(conn) - before - 1 == spent
    assert list(short.positions.values()) == [28, 29, 30] and list(long.positions.values()) == [298, 299, 300]
