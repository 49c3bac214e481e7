"""Redis Sentinel: the primary dies mid-queue; the sentinels promote its replica; the bot and two workers,
connected through the sentinels, carry on, and every job is done exactly once."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from ponybot import keys
from ponybot.connection import RedisTarget
from ponybot.errors import RedisUnavailableError
from ponybot.queue import connect, enqueue
from ponybot.redis_server import find_redis_server, free_port
from ponybot.schemas import Job, JobEvent, build_request
from ponybot.settings import Settings, sentinel_address
from ponybot.workers import models_online
from tests.bot_harness import bot_settings, running_bot
from tests.conftest import cli_env, make_settings, run_cli
from tests.discord_fake.server import FakeDiscord
from tests.test_resilience import workers

MASTER = "ponybot"
#: The sentinels call the primary down after this long without an answer (small: a quick test).
DOWN_AFTER_MS = 1000
T = TypeVar("T")


@dataclass
class SentinelSet:
    """A primary, its replica and three sentinels, each a real redis-server on loopback."""

    root: Path
    primary_port: int = field(default_factory=free_port)
    replica_port: int = field(default_factory=free_port)
    sentinel_ports: list[int] = field(default_factory=lambda: [free_port() for _ in range(3)])
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spawn(self, name: str, *args: str) -> None:
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        self.processes[name] = subprocess.Popen([find_redis_server(), *args], cwd=folder,
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> None:
        common = ["--bind", "127.0.0.1", "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
        self.spawn("primary", "--port", str(self.primary_port), *common)
        self.spawn("replica", "--port", str(self.replica_port), *common,
                   "--replicaof", "127.0.0.1", str(self.primary_port))
        for index, port in enumerate(self.sentinel_ports):
            config = self.root / f"sentinel-{index}" / "sentinel.conf"
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(
                f"port {port}\nbind 127.0.0.1\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER} 10000\n"
                f"sentinel parallel-syncs {MASTER} 1\n")
            self.spawn(f"sentinel-{index}", str(config), "--sentinel")
        replica = redis.Redis(port=self.replica_port, socket_connect_timeout=0.5)
        eventually(lambda: replica.info("replication")["master_link_status"] == "up")
        for port in self.sentinel_ports:  # each sees the replica and the other two sentinels
            sentinel = redis.Redis(port=port, socket_connect_timeout=0.5, decode_responses=True)
            eventually(lambda s=sentinel: len(s.execute_command("SENTINEL", "REPLICAS", MASTER)) == 1  # type: ignore[misc]
                       and len(s.execute_command("SENTINEL", "SENTINELS", MASTER)) == 2)

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.sentinel_ports]

    def primary_port_now(self) -> int:
        sentinel = redis.Redis(port=self.sentinel_ports[0], socket_connect_timeout=0.5, decode_responses=True)
        _host, port = sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
        return int(port)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait()


def eventually(condition: Callable[[], T], timeout: float = 120.0) -> T:
    """``condition()`` once it is truthy; Redis errors meanwhile (a failover) count as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(redis.RedisError, RedisUnavailableError):
            if result := condition():
                return result
        time.sleep(0.2)
    raise TimeoutError("condition never held")


async def in_thread(condition: Callable[[], T], timeout: float = 120.0) -> T:
    """:func:`eventually` off the event loop, so the bot goes on running meanwhile."""
    return await asyncio.to_thread(eventually, condition, timeout)


@contextmanager
def sentinel_set(root: Path) -> Iterator[SentinelSet]:
    topology = SentinelSet(root)
    try:
        topology.start()
        yield topology
    finally:
        topology.stop()


def done_counts(conn: redis.Redis) -> Counter[str]:
    events = [JobEvent.model_validate_json(fields[b"data"]) for _id, fields in conn.xrange(keys.EVENTS_STREAM)]
    return Counter(event.job.id for event in events if event.kind == "done")


def result_messages(fake: FakeDiscord) -> list[dict[str, Any]]:
    return [message for message in fake.messages.values() if message["attachments"]]


@pytest.mark.timeout(900)
async def test_primary_dies_mid_queue(tmp_path: Path, model_cache: Path, fake: FakeDiscord) -> None:
    with sentinel_set(tmp_path / "redis") as topology:
        target = RedisTarget(sentinels=tuple(("127.0.0.1", port) for port in topology.sentinel_ports),
                             master_name=MASTER)
        settings: Settings = bot_settings(make_settings(None, model_cache, redis={"sentinels": topology.addresses,
                                                                                 "master_name": MASTER}), fake)
        conn = connect(target)
        assert conn.info("server")["tcp_port"] == topology.primary_port
        jobs = [Job.create(build_request(settings.limits, prompt=f"pony {i}", steps=2, width=256, height=256))
                for i in range(12)]
        for job in jobs:
            enqueue(conn, job, max_queue=50, result_ttl_s=900, max_attempts=2)
        # heartbeats outlive the failover (3 x 5 s), so jobs running through it are not taken for abandoned
        env = {"PONYBOT_REDIS__SENTINELS": ",".join(topology.addresses), "PONYBOT_REDIS__MASTER_NAME": MASTER,
               "PONYBOT_WORKER__HEARTBEAT_S": "5"}
        async with running_bot(settings, target):
            with workers(None, model_cache, tmp_path, "w-1", "w-2", **env) as procs:
                # the bot queues only for a model some worker holds: wait for both to announce theirs
                await in_thread(lambda: len(models_online(conn).get(settings.default_model, [])) == 2, timeout=300)
                before = await fake.slash("generate", {"prompt": "before the failover", "seed": 1})
                assert "Queued" in await fake.wait_for(lambda: (fake.original(before) or {}).get("content"))
                await in_thread(lambda: sum(done_counts(conn).values()) >= 3, timeout=300)
                topology.processes["primary"].kill()  # SIGKILL, mid-queue
                killed = time.monotonic()
                await in_thread(lambda: topology.primary_port_now() == topology.replica_port)
                promoted = time.monotonic() - killed
                after = await fake.slash("generate", {"prompt": "after it", "seed": 2})
                # the member's answer (an error would name Redis): the bot's next command reaches the new primary
                assert "Queued" in await fake.wait_for(lambda: (fake.original(after) or {}).get("content"))
                await in_thread(lambda: set(done_counts(conn)) >= {job.id for job in jobs}, timeout=400)
                # both results posted (a progress message may carry a preview image meanwhile)
                await fake.wait_for(lambda: all(any(prompt in message["content"] for message in result_messages(fake))
                                                for prompt in ("before the failover", "after it")), timeout=300)
                dead = {name: (tmp_path / f"{name}.log").read_text()[-4000:]
                        for name, process in procs.items() if process.poll() is not None}
                assert not dead  # both carried on
            counts = done_counts(conn)
            assert conn.info("server")["tcp_port"] == topology.replica_port  # the same client followed
        print(f"replica promoted {promoted:.1f} s after the primary was killed "
              f"(down-after-milliseconds {DOWN_AFTER_MS})")
    assert {job.id: counts[job.id] for job in jobs} == {job.id: 1 for job in jobs}  # each done exactly once
    assert all(count == 1 for count in counts.values())
    contents = [message["content"] for message in result_messages(fake)]
    assert [sum(prompt in content for content in contents) for prompt in ("before the failover", "after it")] == [1, 1]


def test_no_sentinel_answers(tmp_path: Path, model_cache: Path) -> None:
    """Sentinels nobody runs: a message naming them, from the library and from the command line."""
    nobody = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    target = RedisTarget(sentinels=tuple(sentinel_address(item) for item in nobody), master_name=MASTER)
    with pytest.raises(RedisUnavailableError, match=f"primary 'ponybot' of sentinels {nobody[0]}, {nobody[1]}"):
        connect(target, timeout=0.5)
    result = run_cli(["status"], cli_env(None, model_cache, PONYBOT_REDIS__SENTINELS=",".join(nobody)), tmp_path)
    assert result.returncode == 1
    assert f"sentinels {nobody[0]}" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip()) < 300 and "ConnectionPool" not in result.stderr  # one line, not redis-py's reprs
