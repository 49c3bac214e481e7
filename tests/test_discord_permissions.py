"""When the bot lacks a permission in a channel: /generate says so at once, in the member's language; a result
finished after its token reaches the member by DM and is counted in /status; /policy show names what lacks."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from ponybot import keys
from ponybot.settings import Settings
from tests.bot_harness import drain, ephemeral_reply, running_bot
from tests.discord_fake.permissions import ATTACH_FILES
from tests.discord_fake.server import MEMBER, FakeDiscord
from tests.test_discord_policy import embed_text


@pytest.mark.parametrize(("locale", "said"), [
    ("en-US", "Attach Files"),
    ("de", "Dateien anhängen"),
    ("fr", "Joindre des fichiers"),
])
async def test_generate_names_the_missing_permission_at_once(locale: str, said: str, fake: FakeDiscord,
                                                             discord_settings: Settings, redis_url: str,
                                                             conn: redis.Redis) -> None:
    channel = fake.add_channel("no-files")
    fake.deny_bot(channel, ATTACH_FILES)
    async with running_bot(discord_settings, redis_url):
        interaction = await fake.slash("generate", {"prompt": "pinkie pie"}, channel_id=channel, locale=locale)
        warning = await fake.wait_for(lambda: ephemeral_reply(fake, interaction))
        queued = fake.original(interaction)
    assert said in warning and "15" in warning
    assert queued is not None and not queued["flags"] & 64  # the job was queued all the same
    assert conn.llen(f"rq:queue:{keys.generate_queue(discord_settings.default_model)}") == 1


async def test_no_warning_where_the_bot_may_post(fake: FakeDiscord, discord_settings: Settings, redis_url: str,
                                                 conn: redis.Redis) -> None:
    async with running_bot(discord_settings, redis_url):
        interaction = await fake.slash("generate", {"prompt": "pinkie pie"})
        await fake.wait_for(lambda: "Queued" in (fake.original(interaction) or {}).get("content", ""))
        shown = await fake.slash("policy", subcommand="show")
        await fake.wait_for(lambda: fake.original(shown))
    assert ephemeral_reply(fake, interaction) is None
    assert "every permission it needs" in embed_text(fake, shown)


@pytest.mark.parametrize("dms_open", [True, False], ids=["dm", "dms-closed"])
async def test_late_result_without_attach_files_goes_by_dm_and_is_counted(
        dms_open: bool, fake: FakeDiscord, discord_settings: Settings, redis_url: str, runtime: Any,
        conn: redis.Redis) -> None:
    channel = fake.add_channel("no-files")
    fake.deny_bot(channel, ATTACH_FILES)
    if not dms_open:
        fake.closed_dms.add(int(MEMBER["id"]))
    async with running_bot(discord_settings, redis_url):
        interaction = await fake.slash("generate", {"prompt": "rarity", "seed": 1}, channel_id=channel,
                                       age_s=14.5 * 60)
        await fake.wait_for(lambda: "Queued" in (fake.original(interaction) or {}).get("content", ""))
        await drain(runtime)
        await fake.wait_for(lambda: conn.hget(keys.undelivered(fake.guild_id), str(channel)))
        if dms_open:
            dm = await fake.wait_for(lambda: fake.dm_messages(int(MEMBER["id"]), fake.messages))
        status = await fake.slash("status", channel_id=channel)
        await fake.wait_for(lambda: fake.original(status))
        shown = await fake.slash("policy", subcommand="show", channel_id=channel)
        await fake.wait_for(lambda: fake.original(shown))
    refused = [r for r in fake.requests if r.method == "POST" and r.path == f"/channels/{channel}/messages"]
    assert [r.status for r in refused] == [403]  # tried once, refused, never posted
    assert not any(m["attachments"] for m in fake.channel_messages(channel))
    if dms_open:
        assert len(fake.attachment_bytes(dm[0])) == 1 and f"<#{channel}>" in dm[0]["content"]
    else:
        assert fake.dm_messages(int(MEMBER["id"]), fake.messages) == []
    assert f"<#{channel}>: 1 result(s) could not be posted" in embed_text(fake, status)
    assert "The bot lacks in this channel: Attach Files" in embed_text(fake, shown)
    assert 0 < conn.ttl(keys.undelivered(fake.guild_id)) <= keys.UNDELIVERED_TTL_S
