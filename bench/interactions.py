"""The bot under a burst: 50 /generate at once through the Discord on loopback.

Prints the time from INTERACTION_CREATE to the defer callback (p50, p99; goal p99 < 100 ms)
and the bot process's resident memory after start (goal < 150 MB, no torch loaded).
Run: ``.venv/bin/python bench/interactions.py``
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, percentile, table  # type: ignore[import-not-found]
from redis import Redis

from ponybot.keys import DEFAULT_MODEL_NAME
from ponybot.redis_server import EmbeddedRedis
from ponybot.workers import WorkerRecord, publish_worker
from tests.discord_fake.server import FakeDiscord, snowflake

BURST = 50


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def loads_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


async def start_bot(fake: FakeDiscord, redis_url: str, cwd: str, limit: int = 1000) -> subprocess.Popen[bytes]:
    """``ponybot bot`` in its own process against ``fake``, ready (its commands synced) when this returns;
    ``limit`` jobs may wait in the queue, all from one server or one member."""
    env = {**os.environ, "DISCORD_TOKEN": "bench", "PONYBOT_REDIS__URL": redis_url,
           "PONYBOT_DISCORD__API_BASE": fake.api_base, "PONYBOT_DISCORD__GATEWAY_URL": fake.gateway_url,
           "PONYBOT_LOG__LEVEL": "WARNING", "PONYBOT_LIMITS__MAX_QUEUE": str(limit),
           "PONYBOT_LIMITS__MAX_QUEUED_PER_GUILD": str(limit), "PONYBOT_LIMITS__MAX_QUEUED_PER_MEMBER": str(limit)}
    bot = subprocess.Popen([sys.executable, "-m", "ponybot", "bot"], env=env, cwd=cwd)
    await fake.wait_for(lambda: fake.sockets and any(r.method == "PUT" for r in fake.requests), 60)
    await asyncio.sleep(0.5)
    return bot


async def stop_bot(bot: subprocess.Popen[bytes]) -> None:
    """Stop the bot; the event loop (where the fake Discord answers its last calls) goes on meanwhile."""
    bot.terminate()
    await asyncio.to_thread(bot.wait, 30)


async def burst(fake: FakeDiscord, size: int, members: int | None = None) -> tuple[list[float], float]:
    """``size`` /generate at once from ``members`` members (each their own by default): each one's
    INTERACTION_CREATE -> defer callback in ms, and the seconds until every "queued" message was written."""
    members = members or size
    users = [FakeDiscord.user(snowflake(), f"member{i}") for i in range(members)]
    edits_before = sum(r.method == "PATCH" and r.path.endswith("/messages/@original") for r in fake.requests)
    started = time.perf_counter()
    interactions = await asyncio.gather(*(
        fake.slash("generate", {"prompt": f"pinkie pie {i}"}, user=users[i % members]) for i in range(size)))
    await fake.wait_for(lambda: all(i.responded_at for i in interactions), 60)
    latencies = [((i.responded_at or 0) - i.sent) * 1000 for i in interactions]
    # then each member's "queued" message: stop the bot only once it has nothing in flight
    await fake.wait_for(lambda: sum(r.method == "PATCH" and r.path.endswith("/messages/@original")
                                    for r in fake.requests) >= edits_before + size, 60)
    return latencies, time.perf_counter() - started


def announce_worker(redis_url: str) -> None:
    """A worker holding the default model, as its heartbeat record says (none need run: the bot is measured)."""
    publish_worker(Redis.from_url(redis_url), WorkerRecord(name="bench", models=[DEFAULT_MODEL_NAME]), 600)


async def main() -> None:
    fake = FakeDiscord()
    await fake.start()
    with tempfile.TemporaryDirectory() as scratch, EmbeddedRedis(Path(scratch), persistent=False) as redis:
        announce_worker(redis.url)
        started = time.perf_counter()
        bot = await start_bot(fake, redis.url, scratch)
        try:
            ready_s = time.perf_counter() - started
            memory = rss_mb(bot.pid)
            torch = loads_torch(bot.pid)
            latencies, queued_s = await burst(fake, BURST)
        finally:
            await stop_bot(bot)
    await fake.stop()
    print(machine())
    print(table(f"/generate x{BURST} at once: INTERACTION_CREATE -> defer callback",
                ["p50 ms", "p99 ms", "max ms", "all queued messages s"],
                [[f"{percentile(latencies, 50):.1f}", f"{percentile(latencies, 99):.1f}", f"{max(latencies):.1f}",
                  f"{queued_s:.2f}"]]))
    print(table("bot process after start", ["ready s", "RSS MB", "torch loaded"],
                [[f"{ready_s:.2f}", f"{memory:.1f}", "yes" if torch else "no"]]))


if __name__ == "__main__":
    os.chdir(ROOT)
    asyncio.run(main())
