"""Several workers: an abandoned job is found while every survivor is busy, goes back to the front of the
queue and runs next; workers on one host share its CPUs."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import redis
from rq.job import Job as RQJob

from ponybot.cpus import available_cpus, cpu_share
from ponybot.queue import enqueue, generation_queue
from ponybot.schemas import Job, build_request
from ponybot.settings import Settings
from tests.conftest import wait_until
from tests.test_resilience import events_for, running_on, workers
from worker.rq_job import ATTEMPTS_FIELD

HEARTBEAT_S, MAINTENANCE_S = 1, 1
#: README: an abandoned job is found within about 3 x heartbeat_s + maintenance_s.
BOUND_S = 3 * HEARTBEAT_S + MAINTENANCE_S
#: Room for a busy 2-core machine's scheduling on top of the bound (the survivor's job lasts far longer).
SLACK_S = 20


def queue_job(conn: redis.Redis, settings: Settings, prompt: str, steps: int, size: int) -> Job:
    job = Job.create(build_request(settings.limits, prompt=prompt, steps=steps, width=size, height=size))
    enqueue(conn, job, max_queue=20, result_ttl_s=900, max_attempts=2)
    return job


def event_order(conn: redis.Redis, jobs: list[Job]) -> list[str]:
    from ponybot import keys
    from ponybot.schemas import JobEvent

    wanted = {job.id: job.request.prompt for job in jobs}
    order = [JobEvent.model_validate_json(fields[b"data"]).job.id for _id, fields in conn.xrange(keys.EVENTS_STREAM)]
    return [wanted[job_id] for job_id in order if job_id in wanted]


@pytest.mark.timeout(900)
def test_abandoned_job_is_found_while_the_survivor_is_busy_and_runs_next(
        conn: redis.Redis, settings: Settings, model_cache: Path, redis_url: str, tmp_path: Path) -> None:
    with workers(redis_url, model_cache, tmp_path, "w-a", "w-b") as procs:
        long = queue_job(conn, settings, "long", steps=30, size=512)  # keeps the survivor busy throughout
        wait_until(lambda: running_on(conn, long.id), timeout=180)
        survivor = running_on(conn, long.id)
        first = queue_job(conn, settings, "first", steps=10, size=512)
        wait_until(lambda: running_on(conn, first.id), timeout=180)
        victim = running_on(conn, first.id)
        assert {survivor, victim} == {"w-a", "w-b"}
        behind = [queue_job(conn, settings, f"behind {i}", steps=2, size=256) for i in range(2)]

        procs[victim].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        queue = generation_queue(conn)
        wait_until(lambda: queue.get_job_ids()[:1] == [first.id], timeout=BOUND_S + SLACK_S)
        found_after = time.monotonic() - killed
        # found by the survivor's sweep while its own job still runs (RQ alone sweeps only between jobs)
        assert running_on(conn, long.id) == survivor and not events_for(conn, long.id)
        # and back at the front, ahead of the jobs queued after it
        assert queue.get_job_ids() == [first.id, *(job.id for job in behind)]
        print(f"abandoned job re-queued {found_after:.1f} s after its worker died "
              f"(bound 3 x heartbeat_s + maintenance_s = {BOUND_S} s)")

        jobs = [long, first, *behind]
        wait_until(lambda: all(events_for(conn, job.id) for job in jobs), timeout=600)
    assert event_order(conn, jobs) == ["long", "first", "behind 0", "behind 1"]
    [event] = events_for(conn, first.id)
    assert event.kind == "done" and event.worker == survivor
    assert int(conn.hget(RQJob.key_for(first.id), ATTEMPTS_FIELD) or 0) == 2


def test_cpu_share(tmp_path: Path) -> None:
    assert cpu_share(4, cpus=16) == 4
    assert cpu_share(3, cpus=2) == 1  # never zero
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # a container limited to 1.5 CPUs may use 2 threads
    assert available_cpus(quota) == min(2, available_cpus(tmp_path / "absent"))
    quota.write_text("max 100000\n")
    assert available_cpus(quota) == available_cpus(tmp_path / "absent") >= 1


def test_up_gives_each_worker_its_share(redis_url: str, model_cache: Path) -> None:
    from ponybot.commands.up import Supervisor
    from tests.conftest import make_settings

    settings = make_settings(redis_url, model_cache, worker={"device": "cpu"})
    supervisor = Supervisor(settings, config=None, workers=3)
    supervisor.plan(redis_url)
    shares = {child.env.get("PONYBOT_WORKER__CPU_THREADS") for child in supervisor.children}
    assert shares == {str(cpu_share(3))}
    chosen = Supervisor(make_settings(redis_url, model_cache, worker={"device": "cpu", "cpu_threads": 5}),
                        config=None, workers=3)
    chosen.plan(redis_url)  # an operator's own value is left alone
    assert {child.env.get("PONYBOT_WORKER__CPU_THREADS") for child in chosen.children} <= {None, "5"}


def test_worker_caps_torch_and_onnxruntime_threads(tmp_path: Path) -> None:
    """In a fresh interpreter (torch's thread pools are per process): the cap reaches torch and the classifier."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = (
        "import torch\n"
        "from ponybot.settings import SafetySettings, load_settings\n"
        "from ponybot.cpus import cpu_threads\nfrom worker.startup import limit_cpu_threads\n"
        "from pathlib import Path\n"
        "from worker.safety import load_safety\n"
        "threads = cpu_threads(load_settings(None, worker={'cpu_threads': 1}))\n"
        "limit_cpu_threads(threads)\n"
        "check = load_safety(SafetySettings(tagger='none'), Path('.'), fail_fast=True, threads=threads)\n"
        "assert [c.name for c in check.classifiers] == ['nsfwjs', 'opennsfw']\n"
        "sessions = [check.classifiers[0].session, check.classifiers[1].model._session]\n"
        "print(threads, torch.get_num_threads(), *(s.get_session_options().intra_op_num_threads for s in sessions))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1", "1", "1"]
