"""``ponybot doctor``'s Discord checks: the token is valid (the bot's user), the servers it is in, and for each
channel that has a policy the bot's permissions there, computed from its roles and the channel's overwrites
as Discord does, naming each missing one in Discord's words. Read-only REST calls with the bot's token."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import redis

from bot.i18n import permission_name
from bot.needs import TO_POST, TO_POST_IN_THREAD, channel_permissions, missing
from ponybot import keys
from ponybot.commands.findings import Finding, Options, finding
from ponybot.errors import RedisUnavailableError
from ponybot.queue import resolve_redis
from ponybot.settings import Settings

THREAD_TYPES = (10, 11, 12)
NEW_TOKEN = ("open the developer portal, Applications > your bot > Bot > Reset Token, and put the new token in "
             "DISCORD_TOKEN (or discord.token in config.toml)")


class Refused(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:200]}")
        self.status = status


def discord_checks(settings: Settings, options: Options) -> list[Finding]:
    return asyncio.run(check_discord(settings))


async def check_discord(settings: Settings) -> list[Finding]:
    assert settings.discord.token is not None
    headers = {"Authorization": f"Bot {settings.discord.token.get_secret_value()}", "User-Agent": "ponybot-doctor"}
    base = settings.discord.api_base.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:

        async def get(path: str) -> Any:
            async with session.get(base + path) as response:
                if response.status != 200:
                    raise Refused(response.status, await response.text())
                return await response.json()

        try:
            me = await get("/users/@me")
        except Refused as error:
            if error.status == 401:
                return [finding("discord token", False, "Discord refused the token (401 Unauthorized)", NEW_TOKEN)]
            return [finding("discord token", False, f"Discord answered {error}", "try again later")]
        except (aiohttp.ClientError, TimeoutError) as error:
            return [finding("discord token", False, f"{base} unreachable ({error or type(error).__name__})",
                            "check this host's internet access (or discord.api_base)")]
        found = [finding("discord token", True, f"valid: the bot is {me['username']} ({me['id']})")]
        guilds = await get("/users/@me/guilds")
        if not guilds:
            return [*found, finding("discord servers", False, "the bot is in no server",
                                    "open the link ponybot invite prints and add the bot to your server")]
        found.append(finding("discord servers", True, ", ".join(f"{g['name']} ({g['id']})" for g in guilds)))
        policies = channels_with_policy(settings, [int(g["id"]) for g in guilds])
        if policies is None:
            return [*found, finding("discord channels", False, "cannot read which channels have a policy (Redis "
                                                               "does not answer)", "see the redis line above")]
        for guild_id, channel_ids in policies.items():
            if channel_ids:
                found += await channel_findings(get, guild_id, int(me["id"]), channel_ids)
        if not any(policies.values()):
            found.append(finding("discord channels", True, "no channel has a policy yet (/policy set)"))
        return found


def channels_with_policy(settings: Settings, guild_ids: list[int]) -> dict[int, list[int]] | None:
    """Guild id -> the channels a moderator gave a policy (none while no Redis was ever started, as before the
    first ``ponybot up``); None when the configured Redis cannot be read."""
    try:
        client = resolve_redis(settings).client(socket_timeout=3, socket_connect_timeout=3)
    except RedisUnavailableError:
        return {guild_id: [] for guild_id in guild_ids}
    try:
        return {guild_id: sorted(int(c) for c in client.hkeys(keys.channel_policy(guild_id, 0)))  # type: ignore[union-attr, unused-ignore]
                for guild_id in guild_ids}
    except redis.RedisError:
        return None
    finally:
        client.close()


async def channel_findings(get: Any, guild_id: int, user_id: int, channel_ids: list[int]) -> list[Finding]:
    channels = {int(c["id"]): c for c in await get(f"/guilds/{guild_id}/channels")}
    roles = {int(r["id"]): int(r["permissions"]) for r in await get(f"/guilds/{guild_id}/roles")}
    member = await get(f"/guilds/{guild_id}/members/{user_id}")
    member_roles = [int(role) for role in member["roles"]]
    found = []
    for channel_id in channel_ids:
        channel = channels.get(channel_id)
        name = f"channel #{channel['name']}" if channel else f"channel {channel_id}"
        if channel is None:
            found.append(finding(name, False, "has a policy but the bot cannot see it (deleted, or no View "
                                              "Channel)", "grant the bot View Channel there, or /policy reset"))
            continue
        have = channel_permissions(guild_id, user_id, roles, member_roles, channel.get("permission_overwrites", []))
        lacking = missing(have, TO_POST_IN_THREAD if channel.get("type") in THREAD_TYPES else TO_POST)
        if lacking:
            words = ", ".join(permission_name("en-US", flag) for flag in lacking)
            found.append(finding(name, False, f"the bot lacks {words}",
                                 f"Edit Channel > Permissions > the bot's role: allow {words}"))
        else:
            found.append(finding(name, True, "the bot has every permission it needs"))
    return found
