"""``ponybot up`` and ``generate --local`` as a newcomer meets them: Ctrl-C, a private queue, an offline model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from ponybot import keys
from ponybot.commands.up import EXIT_CANNOT_START, Child, Supervisor, restart_delay
from ponybot.errors import ForgedJobError
from ponybot.queue import enqueue, generation_queue
from ponybot.redis_server import EmbeddedRedis
from ponybot.schemas import GenerationRequest, Job, JobEvent
from ponybot.settings import Settings
from tests.conftest import STOP_BOUND_S, cli_env, run_cli

DEADLINE_S = 300  # generous: a busy 2-core machine


def wait_for(condition: Callable[[], Any], timeout: float = DEADLINE_S, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.2)
    raise TimeoutError(f"{what} never happened within {timeout} s")


def launch(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
    """``ponybot ARGS`` in its own process group (as a terminal runs it), stderr to a file."""
    log = cwd / f"{args[0]}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "ponybot", *args], cwd=cwd, env=env, stderr=sink,
                                   stdout=subprocess.DEVNULL, start_new_session=True)
    return process, log


def up_env(model_cache: Path, **extra: str) -> dict[str, str]:
    return cli_env(None, model_cache, PONYBOT_WORKER__DEVICE="cpu", PONYBOT_LOG__LEVEL="INFO",
                   PONYBOT_WORKER__MAINTENANCE_S="1", OMP_NUM_THREADS="1", **extra)


def processes_in(folder: Path) -> list[int]:
    """Pids of processes whose working folder is ``folder`` (every child of ``up`` runs there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) == folder.resolve():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return found


def long_job(steps: int = 12) -> Job:
    """Long enough on the tiny model that a signal sent as it starts lands while it runs; short enough
    to finish well within ``up``'s two minutes of grace on a busy CPU."""
    return Job.create(GenerationRequest(prompt="a long pony", steps=steps, width=256, height=256, seed=3))


def test_sigint_to_the_process_group_mid_job(tmp_path: Path, model_cache: Path, settings: Settings) -> None:
    marker = tmp_path / "data" / "redis" / "redis.url"
    up, log = launch(["up", "--workers", "1"], tmp_path, up_env(model_cache))
    try:
        url = wait_for(lambda: marker.is_file() and marker.read_text(), what="embedded Redis")
        conn = redis.Redis.from_url(url)
        job = long_job()
        enqueue(conn, job, max_queue=10, result_ttl_s=600)
        started = generation_queue(conn).started_job_registry
        wait_for(lambda: job.id in started.get_job_ids(), what="the job starting")
        children = children_of(up.pid)
        assert len(children) == 2  # the embedded Redis and the worker
        os.killpg(up.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        wait_for(lambda: f"job={job.id} done" in log.read_text(), what="the job done")
        done_at = time.monotonic()
        assert up.wait(timeout=DEADLINE_S) == 0, log.read_text()
        # the worker, then Redis: within seconds of the last job, never a library's 60 s timer
        assert time.monotonic() - done_at < STOP_BOUND_S, log.read_text()
    finally:
        if up.poll() is None:
            up.kill()
    text = log.read_text()
    assert "Traceback" not in text
    assert text.index("stopping (signal 2)") < text.index(f"job={job.id} done")  # it was mid-job, and finished
    assert wait_for(lambda: not processes_in(tmp_path), timeout=30, what="children gone")
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)
    with EmbeddedRedis(tmp_path / "data" / "redis", persistent=True) as again:  # the AOF: what was kept
        kept = redis.Redis.from_url(again.url)
        [event] = [JobEvent.model_validate_json(f[b"data"]) for _id, f in kept.xrange(keys.EVENTS_STREAM)]
        assert event.job.id == job.id and event.kind == "done" and len(event.images) == 1
        assert generation_queue(kept).count == 0


def test_local_never_touches_the_shared_queue(tmp_path: Path, model_cache: Path) -> None:
    marker = tmp_path / "data" / "redis" / "redis.url"
    up, log = launch(["up", "--workers", "0"], tmp_path, up_env(model_cache))
    try:
        url = wait_for(lambda: marker.is_file() and marker.read_text(), what="embedded Redis")
        conn = redis.Redis.from_url(url)
        theirs = long_job(steps=3)
        enqueue(conn, theirs, max_queue=10, result_ttl_s=600)
        for env in (cli_env(None, model_cache), cli_env(url, model_cache)):  # found, and configured
            mine = run_cli(["generate", "pinkie pie", "--local", "--size", "256x256", "--steps", "2", "--seed", "9",
                            "--out", "mine"], {**env, "OMP_NUM_THREADS": "1"}, tmp_path, timeout=DEADLINE_S)
            assert mine.returncode == 0, mine.stderr
            assert "seed=9" in mine.stdout
        assert generation_queue(conn).job_ids == [theirs.id]  # still waiting, untouched
        assert generation_queue(conn).fetch_job(theirs.id).get_status() == "queued"  # type: ignore[union-attr]
        assert conn.xlen(keys.EVENTS_STREAM) == 0  # no event: nothing ran on, or was reported to, the shared queue
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=DEADLINE_S) == 0, log.read_text()


def interrupt_local(tmp_path: Path, model_cache: Path, args: list[str], when: str) -> None:
    """``generate --local ARGS``, Ctrl-C once ``when`` is logged: exit 130, one last line, nothing left."""
    env = {**cli_env(None, model_cache, PONYBOT_LOG__LEVEL="INFO"), "OMP_NUM_THREADS": "1"}
    local, log = launch(["generate", "pony", "--local", *args], tmp_path, env)
    try:
        wait_for(lambda: when in log.read_text(), what=when)
        os.killpg(local.pid, signal.SIGINT)
        assert local.wait(timeout=DEADLINE_S) == 130
    finally:
        if local.poll() is None:
            local.kill()
    text = log.read_text()
    assert "Traceback" not in text
    assert text.strip().splitlines()[-1] == "ponybot: interrupted"
    assert wait_for(lambda: not processes_in(tmp_path), timeout=30, what="private Redis gone")


def test_local_ctrl_c_mid_job_is_one_line_and_exit_130(tmp_path: Path, model_cache: Path) -> None:
    interrupt_local(tmp_path, model_cache, ["--steps", "50", "--size", "512x512"], "started: txt2img")


def test_local_ctrl_c_while_the_model_loads(tmp_path: Path, model_cache: Path) -> None:
    interrupt_local(tmp_path, model_cache, ["--steps", "50"], "loading model tiny")


def test_unfetchable_model_said_once_and_not_restarted(tmp_path: Path, model_cache: Path) -> None:
    env = up_env(model_cache, PONYBOT_MODEL__SOURCE="nobody/no-such-model", HF_HUB_OFFLINE="1",
                 PONYBOT_MODEL__CACHE_DIR=str(tmp_path / "empty-cache"))
    up, log = launch(["up", "--workers", "1"], tmp_path, env)
    try:  # no token, so the worker was all there was to run: up stops on its own, Redis too
        assert up.wait(timeout=DEADLINE_S) == EXIT_CANNOT_START, log.read_text()
    finally:
        if up.poll() is None:
            up.kill()
    text = log.read_text()
    assert "not restarting it" in text and "nothing left to run: worker 0 on cpu could not start" in text
    assert text.rstrip().endswith("stopped")  # shut down in order, Redis included
    assert text.count("could not fetch nobody/no-such-model") == 1
    assert "PONYBOT_MODEL__SOURCE=tiny make run" in text and "model.source" in text
    assert f"exit {EXIT_CANNOT_START}" in text
    assert "Traceback" not in text
    assert text.count("starting worker 0") == 1  # never restarted


def test_worker_exit_code_for_an_unfetchable_model(tmp_path: Path, redis_url: str) -> None:
    env = cli_env(redis_url, tmp_path, PONYBOT_MODEL__SOURCE="nobody/no-such-model", HF_HUB_OFFLINE="1",
                  PONYBOT_WORKER__DEVICE="cpu", OMP_NUM_THREADS="1")
    result = run_cli(["worker"], env, tmp_path, timeout=DEADLINE_S)
    assert result.returncode == EXIT_CANNOT_START
    assert result.stderr.strip().splitlines()[-1].startswith("ponybot: model.source: could not fetch nobody/")
    assert result.stderr.count("could not fetch") == 1  # said once (diffusers adds its own lines before it)
    assert "Traceback" not in result.stderr


def test_restart_back_off_grows_and_never_sleeps(tmp_path: Path, settings: Settings) -> None:
    assert [restart_delay(n) for n in (1, 2, 3, 4, 10)] == [5, 10, 20, 40, 300]
    supervisor = Supervisor(settings, config=None, workers=0)
    crash = Child("worker 0", [sys.executable, "-c", "raise SystemExit(1)"], dict(os.environ))
    broken = Child("worker 1", [sys.executable, "-c", f"raise SystemExit({EXIT_CANNOT_START})"], dict(os.environ))
    supervisor.children = [crash, broken]
    for child in supervisor.children:
        child.start()
        assert child.process is not None
        child.process.wait(timeout=DEADLINE_S)
    first = crash.process
    now = time.monotonic()
    supervisor.restart_dead(now)  # returns at once: the restart is scheduled, not slept for
    assert crash.restart_at == now + 5 and crash.process is first
    assert broken.given_up
    supervisor.restart_dead(now + 4.9)
    assert crash.process is first
    supervisor.restart_dead(now + 5)
    assert crash.process is not first and crash.restart_at is None
    assert crash.process is not None
    crash.process.wait(timeout=DEADLINE_S)
    supervisor.restart_dead(now + 6)
    assert crash.restart_at == now + 6 + 10  # the next wait doubles
    assert not supervisor.nothing_left  # one child still has a restart coming
    supervisor.stopping = True  # a signal during the back-off: nothing more is started
    supervisor.restart_dead(now + 100)
    assert crash.restart_at == now + 16 and broken.process is not None and broken.process.poll() is not None
    supervisor.children = [broken]
    assert supervisor.nothing_left  # only a child that gave up: up stops


def test_a_local_worker_refuses_jobs_it_did_not_enqueue(runtime: Any, conn: redis.Redis) -> None:

    mine, theirs = long_job(steps=2), long_job(steps=2)
    runtime.only_jobs = frozenset({mine.id})
    with pytest.raises(ForgedJobError, match=f"refusing job\\(s\\) {theirs.id}"):
        runtime.run(theirs.model_dump_json())
    assert conn.xlen(keys.EVENTS_STREAM) == 0  # nothing generated, nothing reported for it
