"""The bot's permissions in the fake Discord: its role, channel overwrites, Discord's computation of the two,
what each REST route the bot calls requires (recorded per request, enforced with 403/50013 as Discord does),
the guild reads ``ponybot doctor`` makes, and direct messages. A mixin of
:class:`~tests.discord_fake.server.FakeDiscord`.

The permission a route requires follows Discord's documentation of each endpoint; the fake never imports
the bot's own constant (``bot/needs.py``), so a test can compare the two.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.discord_fake.model import snowflake

VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
USE_APPLICATION_COMMANDS = 1 << 31
SEND_MESSAGES_IN_THREADS = 1 << 38
ADMINISTRATOR = 1 << 3
ALL = (1 << 50) - 1
#: What the bot's role grants by default in the fake: a server that invited it with a generous link.
BOT_ROLE_PERMISSIONS = (VIEW_CHANNEL | SEND_MESSAGES | EMBED_LINKS | ATTACH_FILES | READ_MESSAGE_HISTORY
                        | USE_APPLICATION_COMMANDS | SEND_MESSAGES_IN_THREADS)
THREAD_TYPES = (10, 11, 12)
MISSING_PERMISSIONS = 50013
CANNOT_DM = 50007


def message_needs(channel: dict[str, Any], body: dict[str, Any], files: list[Any]) -> int:
    """POST /channels/{id}/messages: Discord's documented requirements for a guild channel."""
    needs = VIEW_CHANNEL | (SEND_MESSAGES_IN_THREADS if channel.get("type") in THREAD_TYPES else SEND_MESSAGES)
    if files:
        needs |= ATTACH_FILES
    if body.get("embeds"):
        needs |= EMBED_LINKS
    if body.get("message_reference"):
        needs |= READ_MESSAGE_HISTORY
    return needs


class GuildPermissions:
    channels: dict[int, dict[str, Any]]
    guild_id: int
    bot_user: dict[str, Any]

    def _init_permissions(self) -> None:
        self.bot_role_id = snowflake()
        self.bot_role_permissions = BOT_ROLE_PERMISSIONS
        self.everyone_permissions = 0  # the bot's own view of @everyone (members get MEMBER_PERMISSIONS)
        self.dms: dict[int, dict[str, Any]] = {}  #: DM channel id -> channel
        self.closed_dms: set[int] = set()  #: users who accept no DM from the bot
        self.token: str | None = None  #: when set, a request with another bot token gets 401
        self.needed: list[tuple[str, str, int]] = []  #: (method, route, permission bits) of each bot request

    # -- set-up -----------------------------------------------------------------------------------
    def deny_bot(self, channel_id: int, bits: int) -> None:
        """A member overwrite on the channel denying the bot ``bits`` (as a moderator would set it)."""
        self.channels[channel_id]["permission_overwrites"].append(
            {"id": self.bot_user["id"], "type": 1, "allow": "0", "deny": str(bits)})

    def bot_roles(self) -> list[dict[str, Any]]:
        return [{"id": str(self.bot_role_id), "name": "ponybot", "permissions": str(self.bot_role_permissions),
                 "position": 1, "color": 0, "hoist": False, "managed": True, "mentionable": False, "flags": 0}]

    def bot_permissions(self, channel_id: int) -> int:
        """Discord's computation: @everyone and the bot's role, then the channel's overwrites in order."""
        base = self.everyone_permissions | self.bot_role_permissions
        if base & ADMINISTRATOR:
            return ALL
        overwrites = self.channels[channel_id]["permission_overwrites"]
        for wanted in ((str(self.guild_id),), (str(self.bot_role_id),), (self.bot_user["id"],)):
            allow = deny = 0
            for overwrite in overwrites:
                if overwrite["id"] in wanted:
                    allow |= int(overwrite["allow"])
                    deny |= int(overwrite["deny"])
            base = (base & ~deny) | allow
        return base if base & VIEW_CHANNEL else 0

    # -- enforcement ------------------------------------------------------------------------------
    def forbidden(self, method: str, path: str, body: Any, files: list[Any]) -> web.Response | None:
        """Record what the route needs; a 403 Missing Permissions when the bot lacks it in that channel."""
        for route_method, pattern, needs in ROUTE_NEEDS:
            match = re.fullmatch(pattern, path)
            if route_method != method or match is None:
                continue
            channel = self.channels.get(int(match.group(1))) if match.groups() else None
            bits = needs(channel, body or {}, files) if channel is not None else 0
            self.needed.append((method, pattern, bits))
            if bits and self.bot_permissions(int(match.group(1))) & bits != bits:
                return error(403, MISSING_PERMISSIONS, "Missing Permissions")
            return None
        return None

    def unauthorized(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        if self.token is not None and header.startswith("Bot ") and header != f"Bot {self.token}":
            return error(401, 0, "401: Unauthorized")
        return None

    # -- routes -----------------------------------------------------------------------------------
    def guild_routes(self) -> list[tuple[tuple[str, str], Callable[..., Any]]]:
        return [
            (("GET", r"/users/@me/guilds"), self._my_guilds),
            (("GET", r"/guilds/(\d+)/channels"), self._guild_channels),
            (("GET", r"/guilds/(\d+)/roles"), self._guild_roles),
            (("GET", r"/guilds/(\d+)/members/(\d+)"), self._guild_member),
            (("POST", r"/users/@me/channels"), self._open_dm),
        ]

    async def _my_guilds(self, *_: Any) -> web.Response:
        return ok([{"id": str(self.guild_id), "name": "Ponyville", "icon": None, "owner": False, "permissions": "0",
                    "features": []}])

    def everyone_role(self) -> dict[str, Any]:
        return {"id": str(self.guild_id), "name": "@everyone", "permissions": str(self.everyone_permissions),
                "position": 0, "color": 0, "hoist": False, "managed": False, "mentionable": False, "flags": 0}

    async def _guild_channels(self, request: web.Request, body: Any, files: Any, guild_id: str) -> web.Response:
        if int(guild_id) != self.guild_id:
            return error(404, 10004, "Unknown Guild")
        return ok(list(self.channels.values()))

    async def _guild_roles(self, request: web.Request, body: Any, files: Any, guild_id: str) -> web.Response:
        if int(guild_id) != self.guild_id:
            return error(404, 10004, "Unknown Guild")
        return ok([self.everyone_role(), *self.bot_roles()])

    async def _guild_member(self, request: web.Request, body: Any, files: Any, guild_id: str, user_id: str
                            ) -> web.Response:
        if int(guild_id) != self.guild_id or user_id != self.bot_user["id"]:
            return error(404, 10007, "Unknown Member")
        return ok({"user": self.bot_user, "roles": [str(self.bot_role_id)], "flags": 0, "joined_at": None,
                   "deaf": False, "mute": False})

    async def _open_dm(self, request: web.Request, body: dict[str, Any], *_: Any) -> web.Response:
        recipient = int(body["recipient_id"])
        for channel in self.dms.values():
            if channel["_recipient"] == recipient:
                return ok({k: v for k, v in channel.items() if not k.startswith("_")})
        channel_id = snowflake()
        self.dms[channel_id] = {"id": str(channel_id), "type": 1, "last_message_id": None, "_recipient": recipient,
                                "recipients": [{"id": str(recipient), "username": "member", "discriminator": "0",
                                                "global_name": "member", "avatar": None, "public_flags": 0}]}
        return ok({k: v for k, v in self.dms[channel_id].items() if not k.startswith("_")})

    def dm_refused(self, channel_id: int) -> web.Response | None:
        """A message to a DM channel whose member accepts no DM: 403/50007 as Discord answers."""
        channel = self.dms.get(channel_id)
        if channel is not None and channel["_recipient"] in self.closed_dms:
            return error(403, CANNOT_DM, "Cannot send messages to this user")
        return None

    def dm_messages(self, user_id: int, messages: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
        """What the bot sent ``user_id`` by direct message."""
        ids = {str(channel_id) for channel_id, channel in self.dms.items() if channel["_recipient"] == user_id}
        return [message for message in messages.values() if message["channel_id"] in ids]


#: (method, route, what Discord requires of the bot for it in the route's channel).
ROUTE_NEEDS: list[tuple[str, str, Callable[[dict[str, Any], dict[str, Any], list[Any]], int]]] = [
    ("POST", r"/channels/(\d+)/messages", message_needs),
    ("PATCH", r"/channels/(\d+)/messages/\d+",
     lambda channel, body, files: VIEW_CHANNEL | (ATTACH_FILES if files else 0)),
    ("DELETE", r"/channels/(\d+)/messages/\d+", lambda channel, body, files: VIEW_CHANNEL),
]


def ok(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # exactly "application/json": discord.py breaks on "; charset=utf-8"
    return web.Response(body=json.dumps(data).encode(), status=status,
                        headers={"Content-Type": "application/json", **(headers or {})})


def error(status: int, code: int, message: str) -> web.Response:
    return ok({"code": code, "message": message}, status)
