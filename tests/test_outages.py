"""Every wait rides out Redis going away (a Sentinel failover, a restart) for ``redis.outage_patience_s``, then
says so in one line: the CLI waiting for its job, the bot's delivery, the gallery's ingest."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from gallery.db import make_engine, upgrade
from gallery.ingest import Ingest
from gallery.store import FolderStore
from ponybot.connection import RedisTarget
from ponybot.queue import generation_queue
from ponybot.redis_server import EmbeddedRedis, free_port
from ponybot.settings import Settings
from ponybot.workers import models_online
from tests.bot_harness import bot_settings, drain, running_bot
from tests.conftest import PATIENCE_S, announce, cli_env, make_settings, wait_until
from tests.discord_fake.server import FakeDiscord
from tests.gallery_harness import hand_over
from tests.gated_worker import arrived
from tests.test_failover import MASTER, eventually, sentinel_set
from tests.test_resilience import workers
from worker.runtime import WorkerRuntime

#: Jobs running through the outage keep their heartbeat (3 x 5 s)
SLOW_BEATS = {"PONYBOT_WORKER__HEARTBEAT_S": "5"}


def cli_process(env: dict[str, str], cwd: Path, prompt: str) -> tuple[subprocess.Popen[str], Path]:
    log = cwd / f"cli-{abs(hash(prompt))}.log"
    command = [sys.executable, "-m", "ponybot", "generate", prompt, "--steps", "2", "--size", "256x256",
               "--out", str(cwd / "out")]
    with log.open("w") as sink:  # the child writes its own copy
        process = subprocess.Popen(command, env=env, cwd=cwd, text=True, stdout=subprocess.PIPE, stderr=sink)
    return process, log


@pytest.mark.timeout(900)
@pytest.mark.parametrize("outage", ["sentinel failover", "redis restart"])
def test_cli_gets_its_image_through_an_outage(outage: str, tmp_path: Path, model_cache: Path) -> None:
    """The primary killed (or Redis restarted) while ``ponybot generate`` waits: it still gets its image."""
    with (sentinel_set(tmp_path / "redis") if outage == "sentinel failover" else _nothing()) as topology:
        port = free_port()
        server = EmbeddedRedis(tmp_path / "plain", port=port, persistent=True)
        if topology is not None:
            where = {"PONYBOT_REDIS__SENTINELS": ",".join(topology.addresses), "PONYBOT_REDIS__MASTER_NAME": MASTER}
            conn = RedisTarget(sentinels=tuple(("127.0.0.1", p) for p in topology.sentinel_ports),
                               master_name=MASTER).client()
        else:
            server.start()
            where, conn = {"PONYBOT_REDIS__URL": server.url}, redis.Redis(port=port)
        try:
            with workers(None, model_cache, tmp_path, "w-gated", gates=tmp_path, **where, **SLOW_BEATS):
                eventually(lambda: models_online(conn), timeout=PATIENCE_S)
                env = cli_env(None, model_cache, **where)
                process, log = cli_process(env, tmp_path, f"pony through a {outage}")
                # the CLI waits for its job now, which waits at the gate (RQ's bookkeeping of its start is done)
                wait_until(lambda: arrived(tmp_path / "w-gated").exists(), what="the CLI's job running")
                if topology is not None:
                    # every write so far is on the replica: a write lost with the primary could lose the job
                    eventually(lambda: conn.execute_command("WAIT", 1, 1000) >= 1)
                    topology.processes["primary"].kill()
                    eventually(lambda: topology.primary_port_now() == topology.replica_port)
                else:
                    server.stop()
                    # down until the waiting CLI has seen it (a warning), or died of it
                    wait_until(lambda: "went away" in log.read_text() or process.poll() is not None,
                               what="the CLI noticing the outage")
                    server = EmbeddedRedis(tmp_path / "plain", port=port, persistent=True)
                    server.start()
                (tmp_path / "w-gated").touch()  # the worker finishes the job on the Redis now serving
                out, _ = process.communicate(timeout=PATIENCE_S)
        finally:
            server.stop()
    stderr = log.read_text()
    assert process.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "went away" in stderr  # it did wait through the outage (a line each way, no traceback)
    print(f"{outage}: {[text for text in stderr.splitlines() if 'Redis is back' in text]}")
    [line] = out.splitlines()
    assert Path(line.split("\t")[0]).read_bytes().startswith(b"\x89PNG")


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


@pytest.mark.timeout(600)
def test_cli_past_the_patience_says_one_line(tmp_path: Path, model_cache: Path) -> None:
    """Redis gone longer than redis.outage_patience_s: exit 1, one line naming the job, no traceback."""
    server = EmbeddedRedis(tmp_path / "redis", port=free_port(), persistent=False)
    conn = redis.Redis.from_url(server.start())
    try:
        announce(conn, ["pony-diffusion-v4"])  # a worker that will take it (never comes: the job waits)
        env = cli_env(server.url, model_cache, PONYBOT_REDIS__OUTAGE_PATIENCE_S="2")
        process, log = cli_process(env, tmp_path, "pony alone")
        job_id = wait_until(lambda: generation_queue(conn).get_job_ids(), what="the CLI's job queued")[0]
        server.stop()
        process.communicate(timeout=PATIENCE_S)
    finally:
        server.stop()
    stderr = log.read_text()
    assert process.returncode == 1
    assert "Traceback" not in stderr
    [line] = [text for text in stderr.splitlines() if "error" in text.lower() or "unreachable" in text]
    assert job_id in line and "redis.outage_patience_s" in line


def outage_line(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records
            if record.levelno >= logging.ERROR and "redis.outage_patience_s" in record.getMessage()]


async def test_bot_delivers_through_a_restart(fake: FakeDiscord, model_cache: Path, generator: Any, classifier: Any,
                                              tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Redis restarted (away past the patience) while a job waits: one line said, and the result is posted."""
    port = free_port()
    server = EmbeddedRedis(tmp_path / "redis", port=port, persistent=True)
    server.start()
    settings: Settings = bot_settings(make_settings(server.url, model_cache, redis={"outage_patience_s": 1}), fake)
    conn = redis.Redis(port=port)
    announce(conn, [settings.default_model])
    try:
        async with running_bot(settings, server.url):
            interaction = await fake.slash("generate", {"prompt": "delivered after the restart", "seed": 3})
            await fake.wait_for(lambda: "Queued" in (fake.original(interaction) or {}).get("content", ""))
            server.stop()
            await fake.wait_for(lambda: len(outage_line(caplog)) >= 2, timeout=PATIENCE_S)  # delivery and progress
            server = EmbeddedRedis(tmp_path / "redis", port=port, persistent=True)
            server.start()
            await drain(WorkerRuntime(settings, redis.Redis(port=port), generator, "w-after", classifier))
            message = await fake.wait_for(lambda: next((m for m in fake.messages.values() if m["attachments"]),
                                                       None), timeout=PATIENCE_S)
    finally:
        server.stop()
    assert "delivered after the restart" in message["content"]
    assert all(record.exc_info is None for record in caplog.records)
    lines = outage_line(caplog)
    assert {record.name for record in lines} == {"ponybot.connection"}
    assert sorted(record.getMessage().split(" during ")[1].split(";")[0] for record in lines) == [
        "the delivery of results", "the progress messages"]  # once each, however long it lasted


def test_gallery_ingest_rides_out_a_restart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Redis restarted (away past the patience) under the ingest loop: one line, then the next post is kept."""
    port = free_port()
    server = EmbeddedRedis(tmp_path / "redis", port=port, persistent=True)
    conn = redis.Redis.from_url(server.start())
    engine = make_engine(f"sqlite:///{tmp_path}/gallery.db")
    upgrade(engine)
    ingest = Ingest(engine, FolderStore(tmp_path / "images"), conn, outage_patience_s=1)
    stopping = threading.Event()
    loop = threading.Thread(target=ingest.run, args=(stopping,))
    loop.start()
    try:
        server.stop()
        wait_until(lambda: outage_line(caplog), what="the ingest saying Redis is away")
        server = EmbeddedRedis(tmp_path / "redis", port=port, persistent=True)
        server.start()
        job = hand_over(conn, "kept after the restart")
        wait_until(lambda: list((tmp_path / "images").rglob(f"*{job.id}*")), what="the post in the store")
    finally:
        stopping.set()
        loop.join(PATIENCE_S)
        server.stop()
        engine.dispose()
    assert not loop.is_alive()
    assert [record.name for record in outage_line(caplog)] == ["ponybot.connection"]
    assert all(record.exc_info is None for record in caplog.records)
