"""/policy through the Discord on loopback, and the policy applied to /generate end to end."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from ponybot.parameters import parse_parameters
from ponybot.policy import Mode, PolicyRules
from ponybot.policy_store import PolicyStore
from ponybot.queue import generation_queue
from ponybot.settings import Settings
from tests.bot_harness import drain, ephemeral_reply, running_bot
from tests.discord_fake.server import MANAGE_CHANNELS, MANAGE_GUILD, MEMBER_PERMISSIONS, MODERATOR, FakeDiscord
from tests.test_policy import FlagAll
from worker.png import read_parameters

MOD_PERMISSIONS = MEMBER_PERMISSIONS | MANAGE_CHANNELS | MANAGE_GUILD


def embed_text(fake: FakeDiscord, interaction: Any) -> str:
    message = fake.original(interaction)
    assert message is not None and message["flags"] & 64
    return str(message["embeds"][0]["description"])


async def test_member_without_manage_channels_is_refused(fake: FakeDiscord, discord_settings: Settings,
                                                         redis_url: str, conn: redis.Redis) -> None:
    async with running_bot(discord_settings, redis_url):
        interaction = await fake.slash("policy", {"mode": "nsfw"}, subcommand="set")
        reply = await fake.wait_for(lambda: ephemeral_reply(fake, interaction))
        server = await fake.slash("policy", {"mode": "nsfw"}, subcommand="default",
                                  permissions=MEMBER_PERMISSIONS | MANAGE_CHANNELS)
        server_reply = await fake.wait_for(lambda: ephemeral_reply(fake, server))
    assert "Manage Channels" in reply
    assert "Manage Server" in server_reply
    assert PolicyStore(conn).history(fake.guild_id) == []


async def test_moderator_change_shows_in_history_and_show(fake: FakeDiscord, discord_settings: Settings,
                                                          redis_url: str, conn: redis.Redis) -> None:
    async with running_bot(discord_settings, redis_url):
        changed = await fake.slash("policy", {"mode": "nsfw", "max_steps": 20, "forbidden_terms": "spiders, wasps"},
                                   subcommand="set", user=MODERATOR, permissions=MOD_PERMISSIONS)
        await fake.wait_for(lambda: fake.original(changed))
        history = await fake.slash("policy", subcommand="history", user=MODERATOR, permissions=MOD_PERMISSIONS)
        await fake.wait_for(lambda: fake.original(history))
        show = await fake.slash("policy", subcommand="show")
        await fake.wait_for(lambda: fake.original(show))
    assert "not age-restricted" in embed_text(fake, changed)  # nsfw asked, the channel keeps it SFW
    text = embed_text(fake, history)
    assert f"<@{MODERATOR['id']}>" in text
    assert "mode: `—` → `nsfw`" in text and "max_steps: `—` → `20`" in text
    assert "`spiders`" in embed_text(fake, show) and "steps ≤ 20" in embed_text(fake, show)


async def test_strictness_set_and_shown(fake: FakeDiscord, discord_settings: Settings, redis_url: str,
                                        conn: redis.Redis) -> None:
    async with running_bot(discord_settings, redis_url):
        before = await fake.slash("policy", subcommand="show")
        await fake.wait_for(lambda: fake.original(before))
        changed = await fake.slash("policy", {"strictness": "strict"}, subcommand="set", user=MODERATOR,
                                   permissions=MOD_PERMISSIONS)
        await fake.wait_for(lambda: fake.original(changed))
        after = await fake.slash("policy", subcommand="show")
        await fake.wait_for(lambda: fake.original(after))
    assert "Image check: **standard**" in embed_text(fake, before)
    assert "Built-in term lists: `en`, `de`, `fr`, `fandom`, `emoji`." in embed_text(fake, before)
    assert "`emoji` (with their strict entries)." in embed_text(fake, after)
    assert "Image check: **strict**" in embed_text(fake, changed)
    assert "Image check: **strict**" in embed_text(fake, after)
    assert PolicyStore(conn).rules_for(fake.guild_id, changed.channel_id).strictness == "strict"


async def test_policy_test_command(fake: FakeDiscord, discord_settings: Settings, redis_url: str,
                                   conn: redis.Redis) -> None:
    async with running_bot(discord_settings, redis_url):
        refused = await fake.slash("policy", {"prompt": "n.u.d.e pony"}, subcommand="test", user=MODERATOR,
                                   permissions=MOD_PERMISSIONS)
        allowed = await fake.slash("policy", {"prompt": "pony in a class"}, subcommand="test", user=MODERATOR,
                                   permissions=MOD_PERMISSIONS)
        await fake.wait_for(lambda: fake.original(refused) and fake.original(allowed))
    assert "Refused" in embed_text(fake, refused) and "nude" in embed_text(fake, refused)
    assert "safe, derpibooru_p_95, pony in a class" in embed_text(fake, allowed)
    assert generation_queue(conn).count == 0


async def test_forbidden_prompt_refused_and_not_queued(fake: FakeDiscord, discord_settings: Settings,
                                                       redis_url: str, conn: redis.Redis) -> None:
    async with running_bot(discord_settings, redis_url):
        interaction = await fake.slash("generate", {"prompt": "(ｎｕｄｅ:1.3) twilight"})
        reply = await fake.wait_for(lambda: ephemeral_reply(fake, interaction))
    assert "Not queued" in reply and "nude" in reply
    assert generation_queue(conn).count == 0
    assert not any(request.path.endswith("/callback") and request.body["type"] == 5 for request in fake.requests)


async def test_cooldown(fake: FakeDiscord, discord_settings: Settings, redis_url: str, conn: redis.Redis) -> None:
    PolicyStore(conn).set_channel(fake.guild_id, fake.default_channel, PolicyRules(cooldown_s=60), by=1)
    async with running_bot(discord_settings, redis_url):
        first = await fake.slash("generate", {"prompt": "pony"})
        await fake.wait_for(lambda: "Queued" in (fake.original(first) or {}).get("content", ""))
        second = await fake.slash("generate", {"prompt": "pony"})
        reply = await fake.wait_for(lambda: ephemeral_reply(fake, second))
    assert "cooldown" in reply and "again in" in reply
    assert generation_queue(conn).count == 1


async def test_tightened_policy_applies_to_queued_job(fake: FakeDiscord, discord_settings: Settings,
                                                      redis_url: str, conn: redis.Redis, runtime: Any) -> None:
    channel = fake.add_channel("after-dark", nsfw=True)
    PolicyStore(conn).set_channel(fake.guild_id, channel, PolicyRules(mode=Mode.NSFW), by=1)
    async with running_bot(discord_settings, redis_url):
        interaction = await fake.slash("generate", {"prompt": "a mare at the spa", "seed": 5}, channel_id=channel)
        await fake.wait_for(lambda: "Queued" in (fake.original(interaction) or {}).get("content", ""))
        tightened = await fake.slash("policy", {"mode": "sfw"}, subcommand="set", user=MODERATOR,
                                     permissions=MOD_PERMISSIONS, channel_id=channel)
        await fake.wait_for(lambda: fake.original(tightened))
        await drain(runtime)
        message = await fake.wait_for(lambda: next((m for m in fake.messages.values() if m["attachments"]), None))
    parameters = parse_parameters(read_parameters(fake.attachment_bytes(message)[0]) or "")
    assert parameters["prompt"].startswith("safe, ")  # generated under the SFW rules
    assert "nudity" in parameters["negative_prompt"]


async def test_withheld_images_are_counted_for_the_member(fake: FakeDiscord, discord_settings: Settings,
                                                          redis_url: str, conn: redis.Redis, runtime: Any) -> None:
    runtime.classifier = FlagAll()
    async with running_bot(discord_settings, redis_url):
        interaction = await fake.slash("generate", {"prompt": "pony", "count": 2})
        await fake.wait_for(lambda: "Queued" in (fake.original(interaction) or {}).get("content", ""))
        await drain(runtime)
        message = await fake.wait_for(lambda: "withheld" in (fake.original(interaction) or {}).get("content", "")
                                      and fake.original(interaction))
    assert "2 image(s) withheld by this channel's safety policy" in message["content"]
    assert message["attachments"] == []


async def test_status_shows_an_incomplete_image_check(fake: FakeDiscord, discord_settings: Settings,
                                                      redis_url: str, conn: redis.Redis) -> None:
    from rq import Worker

    from ponybot.status import SafetyState, publish_safety

    worker = Worker([generation_queue(conn)], connection=conn, name="gpu-host-0")
    worker.register_birth()
    publish_safety(conn, "gpu-host-0", SafetyState(classifiers=["opennsfw"], missing={"tagger": "offline, no copy"}))
    try:
        async with running_bot(discord_settings, redis_url):
            status = await fake.slash("status")
            await fake.wait_for(lambda: fake.original(status))
    finally:
        worker.register_death()
    text = embed_text(fake, status)
    assert "gpu-host-0" in text and "IMAGE CHECK INCOMPLETE" in text and "tagger: offline, no copy" in text


#: A member's Discord language and the language of their prompt need not agree: every list applies everywhere.
#: (member locale, channel terms, prompt, the line /policy test adds, in the member's language)
LIST_ROWS = {
    "english member, german prompt": ("en-US", None, "nackte Stute", "Matched: list “de”, entry “nackt/adj”"),
    "german member, french prompt": ("de", None, "jument nue", "Gefunden: Liste „fr“, Eintrag „nu/fr“ (Nacktheit)"),
    "french member, fandom word": ("fr", None, "clop, rarity", "Correspondance : liste « fandom », entrée « clop »"),
    "french member, emoji": ("fr", None, "twilight 🍆💦", "liste « emoji », entrée « 🍆 💦 »"),
    "german member, the channel's own term": ("de", ["spinne*"], "Spinnennetz", "Liste „channel“, Eintrag „spinne*“"),
}


@pytest.mark.parametrize("row", LIST_ROWS.values(), ids=LIST_ROWS.keys())
async def test_policy_test_names_the_list_and_entry_and_generate_refuses(
        fake: FakeDiscord, discord_settings: Settings, redis_url: str, conn: redis.Redis,
        row: tuple[str, list[str] | None, str, str]) -> None:
    locale, terms, prompt, shown = row
    if terms:
        PolicyStore(conn).set_channel(fake.guild_id, fake.default_channel, PolicyRules(forbidden_terms=terms), by=1)
    async with running_bot(discord_settings, redis_url):
        tested = await fake.slash("policy", {"prompt": prompt}, subcommand="test", user=MODERATOR,
                                  permissions=MOD_PERMISSIONS, locale=locale)
        await fake.wait_for(lambda: fake.original(tested))
        generated = await fake.slash("generate", {"prompt": prompt}, locale=locale)
        reply = await fake.wait_for(lambda: ephemeral_reply(fake, generated))
    assert shown in embed_text(fake, tested)
    assert "Traceback" not in reply and generation_queue(conn).count == 0
    assert reply.startswith({"en-US": "Not queued", "de": "Nicht", "fr": "Non mis en file"}[locale]), reply
