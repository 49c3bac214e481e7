"""What the bot needs from Discord (bot/needs.py): the invite, the token's application id, and that every route
the bot's flows call needs no permission the constant lacks (the fake Discord records what each route needs)."""

from __future__ import annotations

import base64
import urllib.parse
from typing import Any

import discord
import pytest
import redis

from bot.needs import INTENTS, PERMISSIONS, SCOPES, application_id_from_token, invite_url
from ponybot.settings import Settings
from tests.bot_harness import drain, running_bot
from tests.discord_fake.permissions import ATTACH_FILES
from tests.discord_fake.server import FakeDiscord


def test_invite_asks_for_exactly_the_constant() -> None:
    query = urllib.parse.parse_qs(urllib.parse.urlparse(invite_url(1234)).query)
    assert query["client_id"] == ["1234"]
    assert int(query["permissions"][0]) == PERMISSIONS.value
    assert query["scope"][0].split() == list(SCOPES) == ["bot", "applications.commands"]


def test_no_privileged_intent() -> None:
    assert INTENTS.guilds
    assert not (INTENTS.members or INTENTS.presences or INTENTS.message_content)


@pytest.mark.parametrize(("token", "expected"), [
    (base64.b64encode(b"123456789012345678").decode().rstrip("=") + ".GhIjKl.secret-part", 123456789012345678),
    ("not-a-token", None),
    ("", None),
    (base64.b64encode(b"pony").decode() + ".x.y", None),
])
def test_application_id_from_token(token: str, expected: int | None) -> None:
    assert application_id_from_token(token) == expected


def unexplained(needed: list[tuple[str, str, int]], granted: discord.Permissions) -> list[str]:
    """Each route the bot called that needs a permission outside ``granted``, with the permission's name."""
    return [f"{method} {route}: {name}" for method, route, bits in needed
            for name, value in discord.Permissions(bits) if value and not getattr(granted, name)]


def test_the_check_can_fail() -> None:
    needed = [("POST", r"/channels/(\d+)/messages", ATTACH_FILES)]
    assert unexplained(needed, discord.Permissions(send_messages=True)) == [
        r"POST /channels/(\d+)/messages: attach_files"]
    assert unexplained(needed, PERMISSIONS) == []


async def test_routes_the_bot_uses_need_nothing_outside_the_constant(
        fake: FakeDiscord, discord_settings: Settings, redis_url: str, runtime: Any,
        conn: redis.Redis) -> None:
    channel = fake.add_channel("art")
    async with running_bot(discord_settings, redis_url):
        # after the token: the result goes to the channel as a message with files and a view
        late = await fake.slash("generate", {"prompt": "applejack", "seed": 2}, channel_id=channel,
                                age_s=14.5 * 60)
        await fake.wait_for(lambda: "Queued" in (fake.original(late) or {}).get("content", ""))
        await drain(runtime)
        await fake.wait_for(lambda: any(m["attachments"] for m in fake.channel_messages(channel)
                                        if m["_interaction_token"] is None))
        for command in ("status", "license"):
            done = await fake.slash(command, channel_id=channel)
            await fake.wait_for(lambda: fake.original(done))  # noqa: B023 - awaited within the iteration
        shown = await fake.slash("policy", subcommand="show", channel_id=channel)
        await fake.wait_for(lambda: fake.original(shown))
    assert any(bits for _method, _route, bits in fake.needed), "no route that needs a permission was called"
    assert unexplained(fake.needed, PERMISSIONS) == []
