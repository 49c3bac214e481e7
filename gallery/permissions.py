"""Discord's permission arithmetic, as Discord computes it, in plain functions (no I/O).

Base permissions: the @everyone role's (its id is the server's id) OR every role the member holds; the
server's owner and ADMINISTRATOR have every permission. Then a channel's overwrites, in Discord's order:
the @everyone overwrite, then all the member's role overwrites together (deny first, then allow), then the
member's own overwrite. See Discord's "Permissions" topic: "Permission Overwrites".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

ADMINISTRATOR = 1 << 3
MANAGE_GUILD = 1 << 5
VIEW_CHANNEL = 1 << 10
ALL = (1 << 53) - 1  #: every permission bit Discord defines, and room to grow
#: What makes a member a moderator of a server in the gallery: Administrator or Manage Server (or owning it).
MODERATOR_BITS = ADMINISTRATOR | MANAGE_GUILD
ROLE, MEMBER = 0, 1  #: an overwrite's ``type``


@dataclass(frozen=True)
class Overwrite:
    id: int
    type: int  #: ROLE or MEMBER
    allow: int
    deny: int

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> Overwrite:
        """From Discord's JSON (ids and bit sets are strings there)."""
        return cls(int(raw["id"]), int(raw["type"]), int(raw.get("allow") or 0), int(raw.get("deny") or 0))


def base_permissions(guild_id: int, owner_id: int | None, member_id: int | None, member_roles: Iterable[int],
                     roles: Mapping[int, int]) -> int:
    """The member's server-wide permissions; ``member_id`` None asks for @everyone alone. ``roles`` maps each of
    the server's role ids (the @everyone role's id is the server's id) to its permissions."""
    if member_id is not None and member_id == owner_id:
        return ALL
    permissions = roles.get(guild_id, 0)
    for role in member_roles:
        permissions |= roles.get(role, 0)
    return ALL if permissions & ADMINISTRATOR else permissions


def channel_permissions(base: int, guild_id: int, member_id: int | None, member_roles: Iterable[int],
                        overwrites: Iterable[Overwrite]) -> int:
    """``base`` after a channel's overwrites (Administrator passes through untouched)."""
    if base & ADMINISTRATOR:
        return ALL
    by_target = {(overwrite.type, overwrite.id): overwrite for overwrite in overwrites}
    permissions = base
    everyone = by_target.get((ROLE, guild_id))
    if everyone is not None:
        permissions = (permissions & ~everyone.deny) | everyone.allow
    allow = deny = 0
    for role in member_roles:
        found = by_target.get((ROLE, role))
        if found is not None and role != guild_id:
            allow |= found.allow
            deny |= found.deny
    permissions = (permissions & ~deny) | allow
    mine = by_target.get((MEMBER, member_id)) if member_id is not None else None
    if mine is not None:
        permissions = (permissions & ~mine.deny) | mine.allow
    return permissions


def can_view(guild_id: int, owner_id: int | None, member_id: int | None, member_roles: Iterable[int],
             roles: Mapping[int, int], overwrites: Iterable[Overwrite]) -> bool:
    """Whether this member (None: @everyone) can open the channel: VIEW_CHANNEL after its overwrites."""
    held = list(member_roles)
    base = base_permissions(guild_id, owner_id, member_id, held, roles)
    return bool(channel_permissions(base, guild_id, member_id, held, overwrites) & VIEW_CHANNEL)


def is_moderator(guild_id: int, owner_id: int | None, member_id: int, member_roles: Iterable[int],
                 roles: Mapping[int, int]) -> bool:
    return bool(base_permissions(guild_id, owner_id, member_id, member_roles, roles) & MODERATOR_BITS)
