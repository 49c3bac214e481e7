"""The queue alone: jobs per second through Redis and a worker whose generator does nothing,
and the time a job spends in the system beyond its generation (enqueue -> event read).

Goals: at least 500 jobs/s; median overhead under 5 ms.
Run: ``.venv/bin/python bench/queue_throughput.py [--jobs 2000]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import machine, percentile, table  # type: ignore[import-not-found]
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty

from ponybot import keys
from ponybot.queue import connect, enqueue
from ponybot.redis_server import EmbeddedRedis
from ponybot.schemas import Job, JobEvent, build_request
from ponybot.settings import Settings
from worker.generate import GenerationOutput
from worker.runner import GenerationWorker
from worker.runtime import WorkerRuntime


class NoModel:
    name = "no-op"
    device = type("Device", (), {"type": "cpu"})()


class NoOpGenerator:
    """Returns at once: what is left to measure is Redis, RQ and ponybot's own bookkeeping."""

    model = NoModel()

    def generate_batch(self, request: Any, items: list[Any], **_: Any) -> list[GenerationOutput]:
        return [GenerationOutput([], [], [], 0.0) for _item in items]


def noop(payload: str) -> None:
    """The job plain RQ runs in the baseline."""


class ThreadWorker(GenerationWorker):
    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--latency-jobs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, EmbeddedRedis(Path(scratch), persistent=False) as server:
        conn = connect(server.url)
        settings = Settings()
        runtime = WorkerRuntime(settings, conn, NoOpGenerator(), "bench")  # type: ignore[arg-type]
        request = build_request(settings.limits, prompt="pinkie pie")

        enqueue_s: list[float] = []
        drain_s: list[float] = []
        plain_s: list[float] = []
        plain = Queue("baseline", connection=conn, serializer=JSONSerializer)
        for _round in range(args.rounds):  # alternated, best of each: this VM's neighbours come and go
            conn.delete(keys.EVENTS_STREAM)
            started = time.perf_counter()
            for _ in range(args.jobs):
                enqueue(conn, Job.create(request), max_queue=10**9, result_ttl_s=60)
            enqueue_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            GenerationWorker(runtime).work(burst=True, logging_level="WARNING")
            drain_s.append(time.perf_counter() - started)
            assert conn.xlen(keys.EVENTS_STREAM) == args.jobs

            # baseline: plain RQ, SimpleWorker, JSON, a function that does nothing
            for _ in range(args.jobs):
                plain.enqueue("queue_throughput.noop", "{}", result_ttl=60)
            started = time.perf_counter()
            SimpleWorker([plain], connection=conn, serializer=JSONSerializer).work(burst=True,
                                                                                 logging_level="WARNING")
            plain_s.append(time.perf_counter() - started)

        worker = ThreadWorker(runtime)
        thread = threading.Thread(target=worker.work, kwargs={"logging_level": "WARNING"}, daemon=True)
        thread.start()
        time.sleep(0.5)
        overheads = []
        after = conn.xrevrange(keys.EVENTS_STREAM, count=1)[0][0].decode()
        for _ in range(args.latency_jobs):
            job = Job.create(request)
            sent = time.perf_counter()
            enqueue(conn, job, max_queue=10**9, result_ttl_s=60)
            while True:
                read = conn.xread({keys.EVENTS_STREAM: after}, block=1000, count=1)
                if read:
                    after = read[0][1][0][0].decode()
                    event = JobEvent.model_validate_json(read[0][1][0][1][b"data"])
                    if event.job.id == job.id:
                        break
            overheads.append((time.perf_counter() - sent - event.generation_s) * 1000)
        worker.request_stop(15, None)
    print(machine())
    print(table(f"queue throughput, {args.jobs} jobs, no-op generator, best of {args.rounds} rounds",
                ["enqueue jobs/s", "ponybot worker jobs/s", "plain RQ SimpleWorker jobs/s (baseline)"],
                [[f"{args.jobs / min(enqueue_s):.0f}", f"{args.jobs / min(drain_s):.0f}",
                  f"{args.jobs / min(plain_s):.0f}"]]))
    print(table(f"time in the system beyond generation, {args.latency_jobs} jobs one at a time",
                ["median ms", "p99 ms", "mean ms"],
                [[f"{statistics.median(overheads):.2f}", f"{percentile(overheads, 99):.2f}",
                  f"{statistics.mean(overheads):.2f}"]]))


if __name__ == "__main__":
    main()
