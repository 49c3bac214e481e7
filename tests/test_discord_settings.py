"""/settings end to end: a member's defaults used by the next /generate, explicit options winning, caps on top."""

from __future__ import annotations

import redis

from ponybot.policy import PolicyRules
from ponybot.policy_store import PolicyStore
from ponybot.queue import cancel_job, generation_queue, load_job
from ponybot.schemas import Job, Sampler
from ponybot.settings import Settings
from ponybot.styles import Style, StyleStore
from tests.bot_harness import ephemeral_reply, running_bot
from tests.discord_fake.server import FakeDiscord, Interaction


def queued_job(conn: redis.Redis) -> Job:
    job_id = generation_queue(conn).get_job_ids()[-1]
    job = load_job(conn, job_id)
    assert job is not None
    cancel_job(conn, job_id)  # the member's share stays free for the next command
    return job


async def generate(fake: FakeDiscord, options: dict[str, object]) -> Interaction:
    interaction = await fake.slash("generate", options)
    await fake.wait_for(lambda: "Queued" in (fake.original(interaction) or {}).get("content", "")
                        or ephemeral_reply(fake, interaction))
    return interaction


async def test_defaults_used_overridden_capped_and_reset(fake: FakeDiscord, discord_settings: Settings,
                                                         redis_url: str, conn: redis.Redis) -> None:
    StyleStore(conn).put(fake.guild_id, [Style(name="Soft", prompt="{prompt}, pastel colors")])
    async with running_bot(discord_settings, redis_url):
        saved = await fake.slash("settings", {"steps": 7, "size": "256x320", "sampler": "euler_a",
                                              "negative_prompt": "blurry", "quality": False, "style": "Soft",
                                              "ephemeral": True, "cfg": 5.0}, subcommand="set")
        await fake.wait_for(lambda: saved.responded)
        shown = await fake.slash("settings", subcommand="show")
        await fake.wait_for(lambda: shown.responded)

        mine = await generate(fake, {"prompt": "pinkie pie"})
        used = queued_job(conn)
        explicit = await generate(fake, {"prompt": "rarity", "steps": 5, "size": "256x256", "quality": True})
        overridden = queued_job(conn)

        PolicyStore(conn).set_channel(fake.guild_id, fake.default_channel, PolicyRules(max_steps=6), by=1)
        capped = await generate(fake, {"prompt": "applejack"})
        capped_reply = ephemeral_reply(fake, capped)
        PolicyStore(conn).reset_channel(fake.guild_id, fake.default_channel, by=1)

        StyleStore(conn).remove(fake.guild_id, "Soft")
        orphan = await generate(fake, {"prompt": "rainbow dash"})
        orphan_reply = ephemeral_reply(fake, orphan)
        too_many = await fake.slash("settings", {"steps": 60}, subcommand="set")
        too_many_reply = await fake.wait_for(lambda: ephemeral_reply(fake, too_many))
        reset = await fake.slash("settings", subcommand="reset")
        await fake.wait_for(lambda: reset.responded)
        await generate(fake, {"prompt": "fluttershy"})
        after_reset = queued_job(conn)

    description = fake.original(shown)["embeds"][0]["description"]  # type: ignore[index]
    assert "**steps**: `7`" in description and "**cfg**: `5.0`" in description
    request = used.request
    assert (request.steps, request.width, request.height, request.sampler, request.cfg) == (7, 256, 320,
                                                                                           Sampler.EULER_A, 5.0)
    assert request.prompt == "pinkie pie, pastel colors" and request.negative_prompt == "blurry"
    assert used.quality_tags is False
    assert mine.ephemeral and used.interaction is not None and used.interaction.ephemeral  # results only to them
    assert explicit.ephemeral and (overridden.request.steps, overridden.request.height, overridden.quality_tags) == (
        5, 256, True)
    assert overridden.request.sampler is Sampler.EULER_A  # what was not typed still comes from the defaults
    assert capped_reply is not None and "this channel allows at most 6 steps (you asked for 7)" in capped_reply
    assert orphan_reply is not None and "your default style Soft no longer exists" in orphan_reply
    assert "**steps**" in too_many_reply and "at most 50" in too_many_reply
    assert (after_reset.request.steps, after_reset.request.sampler, after_reset.request.prompt) == (
        discord_settings.defaults.steps, discord_settings.defaults.sampler, "fluttershy")
    assert after_reset.interaction is not None and not after_reset.interaction.ephemeral
