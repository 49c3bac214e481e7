"""What members see after /generate: position, progress, buttons (also after a restart), limits, cancel."""

from __future__ import annotations

import asyncio
import io
import time
from itertools import pairwise
from typing import Any

import redis
from PIL import Image

from ponybot.queue import cancel_job, enqueue, generation_queue
from ponybot.schemas import Job, Origin, build_request
from ponybot.settings import Settings
from tests.bot_harness import ThreadWorker, drain, ephemeral_reply, running_bot
from tests.conftest import wait_until
from tests.discord_fake.server import MEMBER, OTHER_MEMBER, FakeDiscord, Interaction


def content(fake: FakeDiscord, interaction: Interaction) -> str:
    return str((fake.original(interaction) or {}).get("content", ""))


def buttons(message: dict[str, Any]) -> dict[str, str]:
    """Button label -> custom_id."""
    return {b["label"]: b["custom_id"] for row in message["components"] for b in row["components"]}


async def generated(fake: FakeDiscord, interaction: Interaction) -> dict[str, Any]:
    return await fake.wait_for(lambda: (m := fake.original(interaction)) and m["attachments"]
                               and not m["attachments"][0]["filename"].startswith("preview") and m)


def queue_for_someone_else(conn: redis.Redis, settings: Settings, fake: FakeDiscord, prompt: str) -> Job:
    origin = Origin(guild_id=fake.guild_id, channel_id=fake.default_channel, channel_nsfw=False, user_id=99)
    job = Job.create(build_request(settings.limits, prompt=prompt, steps=2, width=256, height=256), origin=origin)
    enqueue(conn, job, max_queue=10, result_ttl_s=600)
    return job


async def test_position_counts_down(fake: FakeDiscord, discord_settings: Settings, redis_url: str,
                                    conn: redis.Redis, runtime: Any) -> None:
    for prompt in ("first", "second"):
        queue_for_someone_else(conn, discord_settings, fake, prompt)
    async with running_bot(discord_settings, redis_url):
        interaction = await fake.slash("generate", {"prompt": "third"})
        await fake.wait_for(lambda: "position 3" in content(fake, interaction))
        await asyncio.to_thread(ThreadWorker(runtime).work, burst=True, max_jobs=1)
        await fake.wait_for(lambda: "position 2" in content(fake, interaction))
        await asyncio.to_thread(ThreadWorker(runtime).work, burst=True, max_jobs=1)
        await fake.wait_for(lambda: "next in line" in content(fake, interaction))
    assert "about" in content(fake, interaction)  # an ETA from the jobs measured so far


class Paced:
    """The real pipeline, going on past step i only once the member's message shows step i, or two edit
    intervals later (progress is published by time, so a step may have none of its own).

    So the job spans several edit intervals on any machine, and the test waits no longer than that.
    """

    def __init__(self, generator: Any, fake: FakeDiscord, interaction: Interaction, interval_s: float) -> None:
        self.generator, self.fake, self.interaction, self.interval_s = generator, fake, interaction, interval_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self.generator, name)

    def shown(self) -> list[str]:
        return [str((r.body or {}).get("content", "")) for r in list(self.fake.requests) if r.method == "PATCH"
                and r.path.endswith(str(self.interaction.original_id))]

    def generate_deferred(self, request: Any, items: Any, *, on_step: Any = None, **options: Any) -> Any:
        def step(index: int, total: int, latents: Any) -> None:
            if on_step is not None:
                on_step(index, total, latents)
            started = time.monotonic()
            wait_until(lambda: any(text.startswith(f"Generating: step {index} of") for text in self.shown())
                       or time.monotonic() - started >= 2 * self.interval_s,
                       what=f"the member's message showing step {index}")

        return self.generator.generate_deferred(request, items, on_step=step, **options)


async def test_progress_edits_throttled(fake: FakeDiscord, discord_settings: Settings, redis_url: str,
                                        conn: redis.Redis, runtime: Any) -> None:
    runtime.settings = runtime.settings.model_copy(update={"worker": runtime.settings.worker.model_copy(
        update={"preview_every": 2})})
    async with running_bot(discord_settings, redis_url):
        interaction = await fake.slash("generate", {"prompt": "slow", "steps": 6})
        await fake.wait_for(lambda: "Queued" in content(fake, interaction))
        runtime.generator = Paced(runtime.generator, fake, interaction,
                                  discord_settings.discord.progress_edit_interval_s)
        await drain(runtime)
        await generated(fake, interaction)
    edits = [r for r in fake.requests if r.method == "PATCH" and r.path.endswith(str(interaction.original_id))
             and (r.body or {}).get("content", "").startswith(("Generating", "Queued"))]
    progress = [r for r in edits if r.body["content"].startswith("Generating")]
    assert len(progress) >= 2, [r.body["content"] for r in edits]
    assert any(r.files for r in progress)  # a preview image rode along
    gaps = [b.at - a.at for a, b in pairwise(edits)]
    assert min(gaps) >= discord_settings.discord.progress_edit_interval_s - 0.05, gaps


async def test_buttons_work_after_restart(fake: FakeDiscord, discord_settings: Settings, redis_url: str,
                                          conn: redis.Redis, runtime: Any) -> None:
    async with running_bot(discord_settings, redis_url):
        interaction = await fake.slash("generate", {"prompt": "pinkie pie", "seed": 11, "count": 2})
        await fake.wait_for(lambda: "Queued" in content(fake, interaction))
        await drain(runtime)
        result = await generated(fake, interaction)
    ids = buttons(result)
    assert {"Re-roll", "Details", "Delete", "Upscale 1", "Upscale 2", "Vary 1", "Vary 2"} <= set(ids)
    assert all(custom.startswith("ponybot:result:") and len(custom) <= 100 for custom in ids.values())

    async with running_bot(discord_settings, redis_url):  # a new process: only Redis remembers the job
        details = await fake.click(int(result["id"]), ids["Details"])
        text = await fake.wait_for(lambda: ephemeral_reply(fake, details))
        assert "seed:11" in text and "/generate prompt:pinkie pie" in text and "Seeds 11, 12" in text

        upscale = await fake.click(int(result["id"]), ids["Upscale 2"])
        await fake.wait_for(lambda: "Queued" in content(fake, upscale))
        vary = await fake.click(int(result["id"]), ids["Vary 1"])
        await fake.wait_for(lambda: "Queued" in content(fake, vary))
        reroll = await fake.click(int(result["id"]), ids["Re-roll"])  # a third job: over the member's limit
        assert "you already have 2 job(s)" in await fake.wait_for(lambda: ephemeral_reply(fake, reroll))
        await drain(runtime)
        upscaled = await generated(fake, upscale)
        varied = await generated(fake, vary)
        reroll = await fake.click(int(result["id"]), ids["Re-roll"])
        await fake.wait_for(lambda: "Queued" in content(fake, reroll))
        await drain(runtime)
        rerolled = await generated(fake, reroll)

        refused = await fake.click(int(result["id"]), ids["Delete"], user=OTHER_MEMBER)
        assert "Only the member who asked" in await fake.wait_for(lambda: ephemeral_reply(fake, refused))
        assert int(result["id"]) in fake.messages
        deleted = await fake.click(int(result["id"]), ids["Delete"], user=MEMBER)
        await fake.wait_for(lambda: ephemeral_reply(fake, deleted))
    assert int(result["id"]) not in fake.messages

    size = Image.open(io.BytesIO(fake.attachment_bytes(upscaled)[0])).size
    assert size == (512, 512)  # twice 256x256
    assert "seed 12" in upscaled["content"]  # image 2 keeps its seed
    assert Image.open(io.BytesIO(fake.attachment_bytes(varied)[0])).size == (256, 256)
    assert len(fake.attachment_bytes(rerolled)) == 2
    assert "seed 11" not in rerolled["content"]


async def test_member_limit_and_cancel(fake: FakeDiscord, discord_settings: Settings, redis_url: str,
                                       conn: redis.Redis, runtime: Any) -> None:
    async with running_bot(discord_settings, redis_url):
        first = await fake.slash("generate", {"prompt": "one"})
        await fake.wait_for(lambda: "Queued" in content(fake, first))
        second = await fake.slash("generate", {"prompt": "two"})
        await fake.wait_for(lambda: "Queued" in content(fake, second))
        third = await fake.slash("generate", {"prompt": "three"})
        limit = await fake.wait_for(lambda: ephemeral_reply(fake, third))
        assert "you already have 2 job(s) queued or running" in limit
        assert generation_queue(conn).count == 2

        listing = await fake.slash("queue")
        text = await fake.wait_for(lambda: ephemeral_reply(fake, listing))
        assert "position 1**: one" in text and "position 2**: two" in text

        cancel = await fake.slash("cancel")  # the newest waiting job: "two"
        await fake.wait_for(lambda: ephemeral_reply(fake, cancel))
        assert "Cancelled" in content(fake, second)
        assert generation_queue(conn).count == 1

        button = buttons(fake.original(first) or {})["Cancel"]
        other = await fake.click(first.original_id or 0, button, user=OTHER_MEMBER)
        assert "Only the member" in await fake.wait_for(lambda: ephemeral_reply(fake, other))

        await drain(runtime)
        await generated(fake, first)
        fourth = await fake.slash("generate", {"prompt": "four"})  # a finished job frees a place
        await fake.wait_for(lambda: "Queued" in content(fake, fourth))
    assert "Cancelled" in content(fake, second)
    assert not (fake.original(second) or {}).get("attachments")  # never generated


def test_share_is_reserved_atomically(conn: redis.Redis, settings: Settings) -> None:
    """Ten simultaneous requests from one member: exactly the limit get in."""
    from concurrent.futures import ThreadPoolExecutor

    from ponybot.errors import QueueFullError

    origin = Origin(guild_id=1, channel_id=2, channel_nsfw=False, user_id=3)

    def attempt(i: int) -> bool:
        job = Job.create(build_request(settings.limits, prompt=f"p{i}", steps=2, width=256, height=256),
                         origin=origin)
        try:
            enqueue(redis.Redis(connection_pool=conn.connection_pool), job, max_queue=100, result_ttl_s=60,
                    per_member=2, per_guild=20)
        except QueueFullError:
            return False
        return True

    with ThreadPoolExecutor(10) as pool:
        admitted = list(pool.map(attempt, range(10)))
    assert admitted.count(True) == 2
    assert generation_queue(conn).count == 2


async def test_a_restarted_bot_goes_on_counting_down(fake: FakeDiscord, discord_settings: Settings,
                                                     redis_url: str, conn: redis.Redis, runtime: Any) -> None:
    ahead = [queue_for_someone_else(conn, discord_settings, fake, prompt) for prompt in ("first", "second")]
    async with running_bot(discord_settings, redis_url):
        interaction = await fake.slash("generate", {"prompt": "third"})
        await fake.wait_for(lambda: "position 3" in content(fake, interaction))
    # the bot is down; the queue moves on without it
    assert cancel_job(conn, ahead[0].id)
    async with running_bot(discord_settings, redis_url):  # only Redis remembers the job and its message
        await fake.wait_for(lambda: "position 2" in content(fake, interaction))
        await drain(runtime)
        await generated(fake, interaction)
