"""/generate end to end: the real discord.py client, a Discord on loopback, a real Redis and worker."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import redis
from PIL import Image

from ponybot.parameters import parse_parameters
from ponybot.queue import enqueue, generation_queue
from ponybot.redis_server import EmbeddedRedis
from ponybot.schemas import Job, build_request
from ponybot.settings import Settings
from tests.bot_harness import bot_settings, drain, ephemeral_reply, running_bot
from tests.conftest import announce
from tests.discord_fake.server import MEMBER, FakeDiscord
from worker.png import read_parameters


def result_message(fake: FakeDiscord) -> dict[str, Any] | None:
    return next((m for m in fake.messages.values() if m["attachments"]), None)


async def test_generate_end_to_end(fake: FakeDiscord, discord_settings: Settings, redis_url: str,
                                   runtime: Any, conn: redis.Redis) -> None:
    async with running_bot(discord_settings, redis_url):
        interaction = await fake.slash("generate", {"prompt": "pinkie pie, balloons", "count": 2, "seed": 7})
        await fake.wait_for(lambda: "Queued" in (fake.original(interaction) or {}).get("content", ""))
        assert generation_queue(conn).count == 1
        await drain(runtime)
        message = await fake.wait_for(lambda: result_message(fake))
    assert int(message["id"]) == interaction.original_id  # the deferred response itself was edited
    pngs = fake.attachment_bytes(message)
    assert len(pngs) == 2
    seeds = []
    for data in pngs:
        Image.open(io.BytesIO(data)).verify()
        parameters = parse_parameters(read_parameters(data) or "")
        assert "pinkie pie, balloons" in parameters["prompt"]
        seeds.append(int(parameters["Seed"]))
    assert seeds == [7, 8]
    assert "pinkie pie, balloons" in message["content"]
    assert len([m for m in fake.messages.values() if m["attachments"]]) == 1


async def test_restart_delivers_once(fake: FakeDiscord, discord_settings: Settings, redis_url: str,
                                     runtime: Any, conn: redis.Redis) -> None:
    async with running_bot(discord_settings, redis_url):
        interaction = await fake.slash("generate", {"prompt": "fluttershy", "seed": 3})
        await fake.wait_for(lambda: "Queued" in (fake.original(interaction) or {}).get("content", ""))
    await drain(runtime)  # the bot is down while the worker finishes
    assert result_message(fake) is None
    async with running_bot(discord_settings, redis_url):
        message = await fake.wait_for(lambda: result_message(fake))
    async with running_bot(discord_settings, redis_url):  # and a second restart posts nothing more
        await fake.wait_for(lambda: True)
    assert int(message["id"]) == interaction.original_id
    assert len(fake.attachment_bytes(message)) == 1
    assert sum(1 for m in fake.messages.values() if m["attachments"]) == 1
    edits = [r for r in fake.requests if r.files]
    assert len(edits) == 1


async def test_job_finishing_after_token_life_goes_to_channel(fake: FakeDiscord, discord_settings: Settings,
                                                             redis_url: str, runtime: Any,
                                                             conn: redis.Redis) -> None:
    async with running_bot(discord_settings, redis_url):
        # the interaction is 14.5 minutes old when the result arrives: too close to its end to edit
        interaction = await fake.slash("generate", {"prompt": "rarity", "seed": 1}, age_s=14.5 * 60)
        await fake.wait_for(lambda: "Queued" in (fake.original(interaction) or {}).get("content", ""))
        await drain(runtime)
        message = await fake.wait_for(lambda: result_message(fake))
    assert int(message["id"]) != interaction.original_id
    assert message["_interaction_token"] is None  # a plain channel message, with the bot's token
    assert f"<@{MEMBER['id']}>" in message["content"]
    assert [str(user) for user in message["_allowed_mentions"]["users"]] == [MEMBER["id"]]


async def test_token_rejected_by_discord_falls_back_to_channel(fake: FakeDiscord, discord_settings: Settings,
                                                               redis_url: str, runtime: Any,
                                                               conn: redis.Redis) -> None:
    async with running_bot(discord_settings, redis_url):
        interaction = await fake.slash("generate", {"prompt": "applejack", "seed": 2})
        await fake.wait_for(lambda: "Queued" in (fake.original(interaction) or {}).get("content", ""))
        fake.expire(interaction)
        await drain(runtime)
        message = await fake.wait_for(lambda: result_message(fake))
    assert message["_interaction_token"] is None
    assert f"<@{MEMBER['id']}>" in message["content"]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"prompt": "x", "steps": 51}, "**steps**: at most 50 on this bot"),
        ({"prompt": "x", "size": "300x300"}, "**size**: must be a multiple of 64"),
        ({"prompt": "x", "size": "1024x1024"}, "**size**: 1024x1024 is over this bot's budget"),
        ({"prompt": "x", "cfg": 25.0}, "**cfg**: Input should be less than or equal to 20"),
        ({"prompt": "   "}, "**prompt**: must not be empty"),
    ],
)
async def test_bad_options_get_an_ephemeral_message(fake: FakeDiscord, discord_settings: Settings,
                                                    redis_url: str, conn: redis.Redis, options: dict[str, Any],
                                                    expected: str) -> None:
    async with running_bot(discord_settings, redis_url):
        interaction = await fake.slash("generate", options)
        reply = await fake.wait_for(lambda: ephemeral_reply(fake, interaction))
    assert expected in reply
    assert generation_queue(conn).count == 0


async def test_full_queue(fake: FakeDiscord, settings: Settings, redis_url: str, conn: redis.Redis) -> None:
    limits = settings.limits.model_copy(update={"max_queue": 1})
    full = bot_settings(settings.model_copy(update={"limits": limits}), fake)
    waiting = Job.create(build_request(full.limits, prompt="first", steps=4, width=256, height=256))
    enqueue(conn, waiting, max_queue=1, job_timeout_s=60, result_ttl_s=60)
    announce(conn, [settings.default_model])
    async with running_bot(full, redis_url):
        interaction = await fake.slash("generate", {"prompt": "second"})
        reply = await fake.wait_for(lambda: ephemeral_reply(fake, interaction))
    assert "the queue is full" in reply
    assert generation_queue(conn).get_job_ids() == [waiting.id]
    assert fake.original(interaction) is None  # the public "thinking" response was removed


async def test_redis_going_away(fake: FakeDiscord, settings: Settings, tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path, persistent=False) as server:
        own = bot_settings(settings.model_copy(update={"redis": settings.redis.model_copy(
            update={"url": server.url})}), fake)
        async with running_bot(own, server.url):
            server.stop()
            interaction = await fake.slash("generate", {"prompt": "derpy"})
            reply = await fake.wait_for(lambda: ephemeral_reply(fake, interaction))
    assert "queue is unreachable" in reply
    assert "nothing was queued" in reply


async def test_failed_job_is_explained(fake: FakeDiscord, discord_settings: Settings, redis_url: str,
                                       conn: redis.Redis, runtime: Any) -> None:
    import torch

    class OutOfMemory:
        model = runtime.generator.model

        def generate_deferred(self, *args: Any, **kwargs: Any) -> Any:
            raise torch.OutOfMemoryError("CUDA out of memory")

    runtime.generator = OutOfMemory()
    async with running_bot(discord_settings, redis_url):
        interaction = await fake.slash("generate", {"prompt": "big"})
        await fake.wait_for(lambda: "Queued" in (fake.original(interaction) or {}).get("content", ""))
        await drain(runtime)
        message = await fake.wait_for(lambda: "failed" in (fake.original(interaction) or {}).get("content", "")
                                      and fake.original(interaction))
    assert "GPU ran out of memory" in message["content"]
    retry = [b for row in message["components"] for b in row["components"]]
    assert [b["label"] for b in retry] == ["Retry"]
    assert retry[0]["custom_id"].startswith("ponybot:result:retry:")


async def test_license_and_help_are_ephemeral(fake: FakeDiscord, discord_settings: Settings,
                                              redis_url: str, conn: redis.Redis) -> None:
    async with running_bot(discord_settings, redis_url):
        license_ = await fake.slash("license")
        help_ = await fake.slash("help")
        await fake.wait_for(lambda: fake.original(license_) and fake.original(help_))
    license_message, help_message = fake.original(license_), fake.original(help_)
    assert license_message and help_message
    assert license_message["flags"] & 64 and help_message["flags"] & 64
    assert "CreativeML OpenRAIL-M" in license_message["embeds"][0]["description"]
    assert "exploit or harm minors" in license_message["embeds"][0]["description"]
    assert "/generate" in help_message["embeds"][0]["description"]


async def test_commands_synced_with_described_options(fake: FakeDiscord, discord_settings: Settings,
                                                      redis_url: str, conn: redis.Redis) -> None:
    async with running_bot(discord_settings, redis_url):
        pass
    [sync] = [r for r in fake.requests if r.method == "PUT"]
    assert sync.path == f"/applications/{fake.app_id}/commands"
    generate = next(c for c in sync.body if c["name"] == "generate")
    assert all(option["description"] for option in generate["options"])
    names = [option["name"] for option in generate["options"]]
    assert names[:1] == ["prompt"] and {"size", "sampler", "clip_skip", "quality", "count", "seed"} <= set(names)
    sampler = next(o for o in generate["options"] if o["name"] == "sampler")
    assert [c["value"] for c in sampler["choices"]] == ["ddim", "euler_a", "dpmpp_2m_karras"]


async def test_rate_limited_edit_is_retried(fake: FakeDiscord, discord_settings: Settings, redis_url: str,
                                            runtime: Any, conn: redis.Redis) -> None:
    async with running_bot(discord_settings, redis_url):
        interaction = await fake.slash("generate", {"prompt": "derpy", "seed": 4})
        await fake.wait_for(lambda: "Queued" in (fake.original(interaction) or {}).get("content", ""))
        fake.rate_limit("PATCH", r"^/webhooks/", times=2, retry_after=0.2)
        await drain(runtime)
        message = await fake.wait_for(lambda: result_message(fake))
    statuses = [r.status for r in fake.requests if r.method == "PATCH" and r.path.startswith("/webhooks/")]
    assert statuses.count(429) == 2 and statuses[-1] == 200  # discord.py waited retry_after and tried again
    assert len(fake.attachment_bytes(message)) == 1


async def test_images_over_the_upload_limit_are_explained(settings: Settings, redis_url: str, runtime: Any,
                                                          conn: redis.Redis) -> None:
    small = FakeDiscord(attachment_limit=1000)  # this server takes files of at most 1,000 bytes
    await small.start()
    announce(conn, [settings.default_model])
    try:
        async with running_bot(bot_settings(settings, small), redis_url):
            interaction = await small.slash("generate", {"prompt": "big", "count": 2})
            await small.wait_for(lambda: "Queued" in (small.original(interaction) or {}).get("content", ""))
            await drain(runtime)
            message = await small.wait_for(
                lambda: "upload limit" in (small.original(interaction) or {}).get("content", "")
                and small.original(interaction))
        assert "2 image(s) were larger than this server's upload limit" in message["content"]
        assert not any(r.status == 413 for r in small.requests)
        assert small.rejected == []
    finally:
        await small.stop()


def test_attachments_grouped_as_discord_allows() -> None:
    from bot.delivery import group_attachments

    groups, skipped = group_attachments([100] * 23, per_file=1000)
    assert [len(group) for group in groups] == [10, 10, 3] and skipped == []
    mib = 1024 * 1024
    groups, skipped = group_attachments([9 * mib, 9 * mib, 9 * mib, 11 * mib], per_file=10 * mib)
    assert groups == [[0, 1], [2]] and skipped == [3]  # 25 MiB per request, 10 MiB per file
