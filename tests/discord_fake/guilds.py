"""Servers as the bot's token sees them over REST, for the gallery's permission refresh: ``GET
/guilds/{id}`` (owner, roles), ``GET /guilds/{id}/channels`` (overwrites, nsfw), ``GET /channels/{id}``
(a thread: its parent) and ``GET /guilds/{id}/members/{user}`` (roles; 404 with code 10007 once the member
left), shaped as in Discord's
OpenAPI description. A server is made on first use with @everyone (view channels), a moderator role
(Manage Server) and one public text channel, ``DEFAULT_CHANNEL``, the channel tests hand images from."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tests.discord_fake.model import MANAGE_GUILD, MEMBER_PERMISSIONS

VIEW_CHANNEL = 1 << 10
DEFAULT_CHANNEL = 10
OWNER = 1  #: the fake servers' owner: nobody who signs in in tests
UNKNOWN_MEMBER = {"message": "Unknown Member", "code": 10007}
UNKNOWN_CHANNEL = {"message": "Unknown Channel", "code": 10003}


def moderator_role(guild_id: int) -> int:
    return guild_id * 1000 + 1


@dataclass
class FakeGuild:
    id: int
    roles: dict[int, int] = field(default_factory=dict)  #: role id -> permissions
    channels: dict[int, dict[str, Any]] = field(default_factory=dict)
    members: dict[int, list[int]] = field(default_factory=dict)  #: user id -> role ids
    threads: dict[int, dict[str, Any]] = field(default_factory=dict)  #: never in the channel list, as in Discord

    @classmethod
    def made(cls, guild_id: int) -> FakeGuild:
        guild = cls(guild_id, {guild_id: MEMBER_PERMISSIONS, moderator_role(guild_id): MANAGE_GUILD})
        guild.add_channel(DEFAULT_CHANNEL)
        return guild

    def add_channel(self, channel_id: int, *, nsfw: bool = False, private_to: list[int] | None = None) -> None:
        """A text channel; ``private_to``: role ids that may open it (then @everyone may not)."""
        overwrites = []
        if private_to is not None:
            overwrites.append({"id": str(self.id), "type": 0, "allow": "0", "deny": str(VIEW_CHANNEL)})
            overwrites += [{"id": str(role), "type": 0, "allow": str(VIEW_CHANNEL), "deny": "0"}
                           for role in private_to]
        self.channels[channel_id] = {"id": str(channel_id), "type": 0, "guild_id": str(self.id),
                                     "name": f"channel-{channel_id}", "position": len(self.channels),
                                     "nsfw": nsfw, "permission_overwrites": overwrites}

    def add_thread(self, thread_id: int, parent_id: int, *, private: bool = False) -> None:
        self.threads[thread_id] = {"id": str(thread_id), "type": 12 if private else 11, "guild_id": str(self.id),
                                   "parent_id": str(parent_id), "name": f"thread-{thread_id}",
                                   "thread_metadata": {"archived": False, "locked": False}}

    def answer(self) -> dict[str, Any]:
        return {"id": str(self.id), "name": f"server {self.id}", "icon": None, "owner_id": str(OWNER),
                "roles": [{"id": str(role), "name": "@everyone" if role == self.id else f"role {role}",
                           "permissions": str(permissions), "position": 0, "color": 0, "hoist": False,
                           "managed": False, "mentionable": False} for role, permissions in self.roles.items()]}


@dataclass
class FakeGuilds:
    token: str
    guilds: dict[int, FakeGuild] = field(default_factory=dict)
    down: bool = False  #: answer every bot call with a 503, as during an outage

    def guild(self, guild_id: int) -> FakeGuild:
        if guild_id not in self.guilds:
            self.guilds[guild_id] = FakeGuild.made(guild_id)
        return self.guilds[guild_id]

    def join(self, guild_id: int, user_id: int, moderator: bool) -> None:
        """The member is in the server (roles given before are kept), with the moderator role when asked."""
        held = self.guild(guild_id).members.setdefault(user_id, [])
        if moderator and moderator_role(guild_id) not in held:
            held.append(moderator_role(guild_id))

    def leave(self, guild_id: int, user_id: int) -> None:
        self.guild(guild_id).members.pop(user_id, None)

    def set_roles(self, guild_id: int, user_id: int, roles: list[int]) -> None:
        self.guild(guild_id).members[user_id] = list(roles)

    def route(self, path: str, authorization: str) -> tuple[int, Any] | None:
        """(status, body) for a bot route, or None when ``path`` is none of them."""
        found = re.fullmatch(r"/api/v10/guilds/(\d+)(/channels|/members/(\d+))?", path)
        one = re.fullmatch(r"/api/v10/channels/(\d+)", path)
        if found is None and one is None:
            return None
        if authorization != f"Bot {self.token}":
            return 401, {"message": "401: Unauthorized", "code": 0}
        if self.down:
            return 503, {"message": "upstream connect error", "code": 0}
        if one is not None:
            channel_id = int(one.group(1))
            for each in self.guilds.values():
                if channel_id in each.channels or channel_id in each.threads:
                    return 200, each.channels.get(channel_id) or each.threads[channel_id]
            return 404, UNKNOWN_CHANNEL
        assert found is not None
        guild = self.guild(int(found.group(1)))
        if found.group(2) is None:
            return 200, guild.answer()
        if found.group(2) == "/channels":
            return 200, list(guild.channels.values())
        user_id = int(found.group(3))
        if user_id not in guild.members:
            return 404, UNKNOWN_MEMBER
        return 200, {"user": {"id": str(user_id), "username": f"member {user_id}", "discriminator": "0",
                              "avatar": None}, "roles": [str(role) for role in guild.members[user_id]],
                     "joined_at": "2026-01-01T00:00:00+00:00", "deaf": False, "mute": False, "flags": 0}
