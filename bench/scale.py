"""A big server on one machine: how each cost grows with queued jobs, tracked jobs, bursts and workers.

Real code paths on a private Redis: ``ponybot.queue.enqueue`` (fair share included), the progress
tracker's queue read (``bot/tracker.py``), the worker's claim/publish path (``GenerationWorker``) with a
stub generator that returns a fixed image at once, and the bot process itself (``ponybot bot``) against
the Discord on loopback for the defer latency and the Redis commands of a job end to end.
Run: ``.venv/bin/python bench/scale.py`` (a small run: ``--queued 100,1000 --tracked 10,100 --bursts 20
--workers 1,2 --jobs 100 --e2e-jobs 10``).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from common import ROOT, machine, percentile, table  # type: ignore[import-not-found]
from interactions import announce_worker, burst, start_bot, stop_bot  # type: ignore[import-not-found]
from PIL import Image
from redis import Redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from bot.tracker import Tracked, Tracker
from ponybot import keys
from ponybot.queue import connect, enqueue
from ponybot.redis_server import EmbeddedRedis
from ponybot.schemas import InteractionRef, Job, Origin, build_request, utcnow
from ponybot.settings import Settings
from ponybot.status import SafetyState
from tests.discord_fake.server import FakeDiscord

GUILD = 1000


def sizes(text: str) -> list[int]:
    return [int(item) for item in text.split(",") if item]


def load_header() -> str:
    one, five, _ = os.getloadavg()
    cores = os.cpu_count() or 1
    state = "quiet" if one < 0.5 * cores else "busy"
    return f"load average {one:.2f} (1 min) {five:.2f} (5 min) on {cores} cores: {state} machine"


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:.2f}"


class StubModel:
    name = "stub"
    device = SimpleNamespace(type="cpu")


class StubBatch:
    def __init__(self, image: Image.Image, items: list[Any]) -> None:
        self.image, self.items = image, items

    def outputs(self) -> list[Any]:
        from worker.generate import GenerationOutput

        return [GenerationOutput([self.image] * item.count, [item.seed + i for i in range(item.count)],
                                 [False] * item.count, 0.001) for item in self.items]


class StubGenerator:
    """Returns one fixed image per requested image at once: what is left is Redis, RQ and ponybot's bookkeeping."""

    model = StubModel()
    fast_interval = 3

    def __init__(self, pixels: int) -> None:
        self.image = Image.effect_noise((pixels, pixels), 64).convert("RGB")

    def generate_deferred(self, request: Any, items: list[Any], **_: Any) -> StubBatch:
        return StubBatch(self.image, items)


class StubCheck:
    """The image check, answering "not flagged" at once (the worker's SFW path runs; nothing is withheld)."""

    name = "stub"
    state = SafetyState(classifiers=["stub"])

    def classify(self, images: list[Image.Image], *_: Any) -> list[Any]:
        from worker.safety import Verdict

        return [Verdict(False) for _image in images]


def stub_settings() -> Settings:
    # a fixed time limit: nothing to measure on a stub; results kept an hour, as by default
    return Settings.model_validate({"worker": {"step_budget_s": 1.0}})


def member_job(settings: Settings, index: int, members: int, prompt: str = "pinkie pie") -> Job:
    """A job from one of ``members`` members of one server, with an interaction whose message the tracker edits."""
    ref = InteractionRef(id=index + 1, application_id=1, token=f"token-{index}", message_id=index + 1,
                         expires_at=utcnow().replace(year=utcnow().year + 1))
    origin = Origin(guild_id=GUILD, channel_id=1, channel_nsfw=False, user_id=index % members)
    return Job.create(build_request(settings.limits, prompt=f"{prompt} {index}"), origin=origin, interaction=ref)


def used_memory(conn: Redis) -> int:
    return int(conn.info("memory")["used_memory"])


def queue_costs(conn: Redis, settings: Settings, args: argparse.Namespace) -> list[str]:
    """Enqueue p50/p99 and the tracker's read per tick, as the queue grows; memory per queued job."""
    tracker = Tracker(SimpleNamespace(sync_redis=conn, settings=settings))  # type: ignore[arg-type]
    jobs: list[Job] = []
    enqueue_rows, tick_rows = [], []
    empty = used_memory(conn)
    for size in args.queued:
        times: list[float] = []
        while len(jobs) < size:
            job = member_job(settings, len(jobs), args.members)
            started = time.perf_counter()
            enqueue(conn, job, max_queue=10**9, result_ttl_s=3600, per_member=10**9, per_guild=10**9)
            times.append(time.perf_counter() - started)
            jobs.append(job)
        sample = times[-args.samples:]
        enqueue_rows.append([size, len(sample), ms(sample, 50), ms(sample, 99)])
        for tracked_count in [t for t in args.tracked if t <= size]:
            due = [Tracked(job) for job in jobs[-tracked_count:]]  # the deepest: the worst place to be found
            ticks = []
            for _ in range(args.ticks):
                started = time.perf_counter()
                snapshot = tracker.read_queue(due)
                ticks.append(time.perf_counter() - started)
            assert all(snapshot.positions.get(t.job.id) == size - tracked_count + i + 1 for i, t in enumerate(due))
            tick_rows.append([size, tracked_count, ms(ticks, 50), ms(ticks, 99)])
    per_job = (used_memory(conn) - empty) / len(jobs)
    return [table(f"enqueue (fair share, position) as the queue grows, last {args.samples} enqueues",
                  ["queued", "samples", "p50 ms", "p99 ms"], enqueue_rows),
            table(f"tracker tick: the queue read (Tracker.read_queue), {args.ticks} ticks",
                  ["queued", "tracked", "p50 ms", "p99 ms"], tick_rows),
            f"Redis memory per queued job: {per_job:.0f} bytes ({len(jobs)} queued)"]


@dataclass
class Started:
    """One worker process's start-up, in seconds: imports, building the worker, and ``work()`` up to its
    first dequeue (registration, the command channel, the first sweep), each as wall and as CPU time."""

    import_s: float
    import_cpu_s: float
    build_s: float
    build_cpu_s: float
    work_s: float
    work_cpu_s: float


class Clock:
    """Wall and CPU time of one process's phases, read at each :meth:`lap`."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.monotonic(), time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.monotonic(), time.process_time()
        spent = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return spent


def gated(worker_class: Any, clock: Clock, before: tuple[float, ...], ready: Any, go: Any) -> Any:
    """``worker_class`` whose first dequeue reports the process's start-up to ``ready`` and waits for ``go``:
    the timed window starts with every worker at its first dequeue, ``work()``'s own start-up done. As it stops
    it reports the CPU it spent since (every thread; its exit, a fixed cost per worker, left out)."""

    class Gated(worker_class):  # type: ignore[misc, valid-type]
        waited = False

        def dequeue_job_and_maintain_ttl(self, timeout: Any, max_idle_time: Any = None) -> Any:
            if not self.waited:
                self.waited = True
                ready.put(Started(*before, *clock.lap()))
                go.wait()
                clock.lap()
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)

        def teardown(self) -> None:
            stage = getattr(self, "stage", None)  # ponybot's post stage: the batches it finishes count
            if stage is not None:
                stage.close()
            ready.put(clock.lap()[1])
            super().teardown()

    return Gated


def run_stub_worker(url: str, name: str, pixels: int, ready: Any, go: Any) -> None:
    clock = Clock()
    from worker.runner import GenerationWorker
    from worker.runtime import WorkerRuntime

    imported = clock.lap()
    runtime = WorkerRuntime(stub_settings(), connect(url), StubGenerator(pixels), name,  # type: ignore[arg-type]
                            classifier=StubCheck())
    worker = gated(GenerationWorker, clock, (*imported, *clock.lap()), ready, go)(runtime)
    worker.work(burst=True, logging_level="WARNING")


def noop(payload: str) -> None:
    """The job plain RQ runs in the baseline."""


def run_plain_worker(url: str, name: str, ready: Any, go: Any) -> None:
    clock = Clock()
    imported = clock.lap()  # rq is imported before the fork
    conn = Redis.from_url(url)
    worker = gated(SimpleWorker, clock, (*imported, *clock.lap()), ready, go)(
        [Queue("baseline", connection=conn, serializer=JSONSerializer)], connection=conn,
        serializer=JSONSerializer, name=name)
    worker.work(burst=True, logging_level="WARNING")


@contextmanager
def started(url: str, target: Any, count: int, extra: tuple[Any, ...], patience_s: float = 600
            ) -> Iterator[tuple[float, list[Started], Callable[[], float]]]:
    """``count`` worker processes, each stopped at its first dequeue until all are there; yields the seconds
    from the first fork until the last was ready, each one's start-up, and a call that waits for them to stop
    and sums the CPU they spent since; then lets them all go at once. Those still running on exit are killed."""
    context = multiprocessing.get_context("fork")
    go, ready = context.Event(), context.Queue()
    forked = time.monotonic()
    procs = [context.Process(target=target, args=(url, f"w{i}-{time.monotonic_ns()}", *extra, ready, go),
                             daemon=True) for i in range(count)]
    for proc in procs:
        proc.start()
    try:
        startups = [ready.get(timeout=patience_s) for _ in procs]
        startup_s = time.monotonic() - forked
        go.set()
        yield startup_s, startups, lambda: sum(ready.get(timeout=patience_s) for _ in procs)
    finally:
        go.set()
        for proc in procs:
            proc.join(90)  # a plain RQ worker can wait up to 60 s on its pub/sub read as it stops
            if proc.is_alive():
                proc.kill()


@dataclass
class Drained:
    startup_s: float  #: from the first fork until every worker was at its first dequeue
    startups: list[Started]
    steady_s: float  #: from then until every job finished
    cpu_s: float  #: CPU the workers spent from their first dequeue until they stopped (every thread)


def drain(url: str, target: Any, count: int, extra: tuple[Any, ...], done: Any) -> Drained:
    """``count`` worker processes started, then timed from when all are ready until ``done()`` (every job
    finished), not until they exit."""
    with started(url, target, count, extra) as (startup_s, startups, cpu_s):
        begun = time.perf_counter()
        while not done():
            time.sleep(0.005)
        return Drained(startup_s, startups, time.perf_counter() - begun, cpu_s())


def worker_costs(conn: Redis, url: str, settings: Settings, args: argparse.Namespace) -> list[str]:
    """Jobs/s through N stub workers and N plain RQ SimpleWorkers, timed once every worker is at its first
    dequeue; their start-up apart; memory per finished job and its expiry."""
    rows, startup_rows = [], []
    finished_memory = ""
    for count in args.workers:
        conn.flushdb()
        empty = used_memory(conn)
        for i in range(args.jobs):
            enqueue(conn, member_job(settings, i, args.members), max_queue=10**9, result_ttl_s=3600,
                    per_member=10**9, per_guild=10**9)
        ours = drain(url, run_stub_worker, count, (args.pixels,), lambda: conn.xlen(keys.EVENTS_STREAM) >= args.jobs)
        if not finished_memory:
            finished_memory = memory_after(conn, empty, args.jobs)
        baseline = Queue("baseline", connection=conn, serializer=JSONSerializer)
        for _ in range(args.jobs):
            baseline.enqueue("scale.noop", "{}", result_ttl=3600)
        plain = drain(url, run_plain_worker, count, (), lambda q=baseline: q.finished_job_registry.count >= args.jobs)
        rows.append([count, args.jobs, f"{args.jobs / ours.steady_s:.0f}", f"{args.jobs / plain.steady_s:.0f}",
                     f"{plain.steady_s / ours.steady_s:.2f}", f"{ours.cpu_s / args.jobs * 1000:.1f}",
                     f"{plain.cpu_s / args.jobs * 1000:.1f}"])
        startup_rows += [[count, name, f"{run.startup_s:.1f}", *phases(run.startups)]
                         for name, run in (("ponybot", ours), ("plain RQ", plain))]
    return [table(f"jobs/s through stub workers ({args.pixels}x{args.pixels} PNG) and plain RQ SimpleWorkers, "
                  "from when every worker is at its first dequeue",
                  ["workers", "jobs", "ponybot jobs/s", "plain RQ jobs/s", "ratio", "ponybot CPU ms/job",
                   "plain RQ CPU ms/job"], rows),
            table("worker start-up: fork to first dequeue (all at once on this machine's cores); per worker, "
                  "median wall s / CPU s",
                  ["workers", "kind", "all ready s", "imports", "build", "work() to dequeue"], startup_rows),
            finished_memory]


def phases(startups: list[Started]) -> list[str]:
    """Median wall / CPU seconds of each start-up phase over the workers."""
    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    return [f"{median([getattr(s, wall) for s in startups]):.2f}/{median([getattr(s, cpu) for s in startups]):.2f}"
            for wall, cpu in (("import_s", "import_cpu_s"), ("build_s", "build_cpu_s"), ("work_s", "work_cpu_s"))]


def memory_after(conn: Redis, empty: int, jobs: int) -> str:
    """Memory per finished job, and every key a job leaves behind with how long it lives."""
    kinds: Counter[str] = Counter()
    ttls: dict[str, set[int]] = {}
    sizes: dict[str, int] = {}
    for key in conn.scan_iter(count=1000):
        name = key.decode()
        kind = ":".join(part if not (len(part) >= 16 and part.isalnum()) else "<id>" for part in name.split(":"))
        kinds[kind] += 1
        ttls.setdefault(kind, set()).add(int(conn.ttl(key)))
        sizes.setdefault(kind, int(conn.memory_usage(key) or 0))
    png = len(conn.get(next(iter(conn.scan_iter(match=keys.image("*", 0))))) or b"")
    rows = [[kind, count, sizes[kind], describe_ttl(ttls[kind])] for kind, count in sorted(kinds.items())]
    return "\n".join([
        table(f"what {jobs} finished jobs leave in Redis", ["key", "count", "bytes (one)", "expires in s"], rows),
        f"Redis memory per finished job: {(used_memory(conn) - empty) / jobs:.0f} bytes, of which one PNG "
        f"{png} bytes (a 512x512 PNG from the model is about 400,000)"])


def describe_ttl(values: set[int]) -> str:
    if values == {-1}:
        return "never"
    live = sorted(v for v in values if v >= 0)
    return f"{live[0]}-{live[-1]}" + (" (some never)" if -1 in values else "")


async def bot_costs(url: str, conn: Redis, args: argparse.Namespace, scratch: str) -> list[str]:
    """Defer p99 under bursts, then Redis commands and bytes per job, /generate to result posted."""
    rows = []
    fake = FakeDiscord()
    await fake.start()
    announce_worker(url)
    bot = await start_bot(fake, url, scratch, limit=10**6)
    posted = 0
    try:
        for size in args.bursts:
            latencies, queued_s = await burst(fake, size)
            rows.append([size, ms([v / 1000 for v in latencies], 50), ms([v / 1000 for v in latencies], 99),
                         f"{queued_s:.2f}"])
            with started(url, run_stub_worker, 1, (args.pixels,)):
                await fake.wait_for(lambda goal=posted + size: len(results_posted(fake)) >= goal, 120)
            posted += size
        conn.config_resetstat()
        before = conn.info("stats")
        await burst(fake, args.e2e_jobs, members=args.members)
        with started(url, run_stub_worker, 1, (args.pixels,)):
            await fake.wait_for(lambda: len(results_posted(fake)) >= posted + args.e2e_jobs, 120)
        after = conn.info("stats")
        commands = conn.info("commandstats")
    finally:
        await stop_bot(bot)
        await fake.stop()
    per_job = (after["total_commands_processed"] - before["total_commands_processed"]) / args.e2e_jobs
    top = sorted(commands.items(), key=lambda item: -item[1]["calls"])[:12]
    return [table("/generate bursts through the Discord on loopback: INTERACTION_CREATE -> defer callback",
                  ["at once", "p50 ms", "p99 ms", "all queued messages s"], rows),
            table(f"Redis per job end to end ({args.e2e_jobs} jobs: /generate, queued message, tracker, "
                  f"worker, delivery, idle loops included)",
                  ["commands/job", "bytes in/job", "bytes out/job"],
                  [[f"{per_job:.0f}",
                    f"{(after['total_net_input_bytes'] - before['total_net_input_bytes']) / args.e2e_jobs:.0f}",
                    f"{(after['total_net_output_bytes'] - before['total_net_output_bytes']) / args.e2e_jobs:.0f}"]]),
            table("the commands behind it (calls per job)", ["command", "calls/job"],
                  [[name.removeprefix("cmdstat_"), f"{stat['calls'] / args.e2e_jobs:.1f}"] for name, stat in top])]


def results_posted(fake: FakeDiscord) -> list[dict[str, Any]]:
    return [m for m in fake.messages.values() if m.get("attachments")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--queued", type=sizes, default=sizes("100,1000,10000,50000"))
    parser.add_argument("--tracked", type=sizes, default=sizes("10,100,1000"))
    parser.add_argument("--bursts", type=sizes, default=sizes("50,200"))
    parser.add_argument("--workers", type=sizes, default=sizes("1,4,16"))
    parser.add_argument("--jobs", type=int, default=1000, help="jobs drained per worker count")
    parser.add_argument("--e2e-jobs", type=int, default=100, help="jobs followed end to end for the Redis count")
    parser.add_argument("--members", type=int, default=1000, help="distinct members the jobs come from")
    parser.add_argument("--samples", type=int, default=200, help="enqueues timed at each queue size")
    parser.add_argument("--ticks", type=int, default=20, help="tracker reads timed at each size")
    parser.add_argument("--pixels", type=int, default=64, help="side of the stub's fixed image")
    parser.add_argument("--skip", default="", help="sections to leave out: queue,workers,bot")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    print(machine())
    print(load_header() + " (at start)")
    out: list[str] = []
    settings = stub_settings()
    with tempfile.TemporaryDirectory() as scratch, EmbeddedRedis(Path(scratch) / "redis", persistent=False) as server:
        conn = connect(server.url)
        if "queue" not in skip:
            out += queue_costs(conn, settings, args)
            print("\n\n".join(out[-3:]), flush=True)
        if "workers" not in skip:
            out += worker_costs(conn, server.url, settings, args)
            print("\n\n" + "\n\n".join(out[-3:]), flush=True)
        if "bot" not in skip:
            conn.flushdb()
            out += asyncio.run(bot_costs(server.url, conn, args, scratch))
            print("\n\n" + "\n\n".join(out[-3:]), flush=True)
    print("\n" + load_header() + " (at end)")


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
