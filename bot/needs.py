"""What the bot needs from Discord, in one place: the invite's scopes, the permission bits its code uses,
the gateway intents it asks for. The invite (``ponybot invite``, logged at start), ``/generate``'s warning,
``/policy show`` and ``ponybot doctor`` all read these constants.

Why each permission (in the channel where members use ``/generate``):

* View Channel: see the channel at all (without it nothing else works).
* Send Messages: post a result as a channel message once the member's 15-minute interaction token has
  expired (before that, results go through the interaction and need no permission).
* Send Messages in Threads: the same, when ``/generate`` was used in a thread.
* Attach Files: the images are attachments of that message.
* Embed Links: the gallery link and the result's embeds show as previews.

Intents: the non-privileged defaults. ``guilds`` keeps the channel cache (an age-restricted flag changed by
a moderator reaches the bot at once); no privileged intent (members, presences, message content) is used:
the bot reads nothing but its own slash commands and buttons.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import discord

from bot.i18n import permission_name

SCOPES = ("bot", "applications.commands")

#: Every permission the bot's code uses in a channel (the invite asks for exactly these).
PERMISSIONS = discord.Permissions(view_channel=True, send_messages=True, send_messages_in_threads=True,
                                  attach_files=True, embed_links=True)

#: What posting a finished result as a channel message needs (a thread needs its own send permission).
TO_POST = discord.Permissions(view_channel=True, send_messages=True, attach_files=True, embed_links=True)
TO_POST_IN_THREAD = discord.Permissions(view_channel=True, send_messages_in_threads=True, attach_files=True,
                                        embed_links=True)

#: Gateway intents: no privileged one.
INTENTS = discord.Intents.default()

def invite_url(application_id: int) -> str:
    """The OAuth2 URL that adds the bot to a server with exactly :data:`PERMISSIONS`."""
    return discord.utils.oauth_url(application_id, permissions=PERMISSIONS, scopes=SCOPES)


def application_id_from_token(token: str) -> int | None:
    """A bot token's first segment is its user id (= the application id) in base64; None if it is not."""
    first = token.split(".", 1)[0]
    try:
        decoded = base64.b64decode(first + "=" * (-len(first) % 4), validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return int(decoded) if decoded.isdigit() else None


def missing(have: discord.Permissions, need: discord.Permissions = PERMISSIONS) -> list[str]:
    """The attribute names of the permissions in ``need`` that ``have`` lacks (administrator has all)."""
    if have.administrator:
        return []
    return [name for name, value in need if value and not getattr(have, name)]


def lacking_here(interaction: discord.Interaction[Any]) -> list[str]:
    """What the bot lacks to post a result in the interaction's channel (``app_permissions`` are its own there)."""
    thread = isinstance(interaction.channel, discord.Thread)
    return missing(interaction.app_permissions, TO_POST_IN_THREAD if thread else TO_POST)


def names(locale: str | discord.Locale | None, permissions: list[str]) -> str:
    """The permissions as Discord's settings call them, in the reader's language, comma-separated."""
    return ", ".join(permission_name(locale, name) for name in permissions)


def channel_permissions(guild_id: int, user_id: int, roles: dict[int, int], member_roles: list[int],
                        overwrites: list[dict[str, Any]]) -> discord.Permissions:
    """Discord's computation of a member's permissions in a channel, from the REST API's objects: @everyone
    and the member's roles, then the channel's overwrites for @everyone, the roles, the member."""
    base = discord.Permissions(roles.get(guild_id, 0))
    for role in member_roles:
        base.value |= roles.get(role, 0)
    if base.administrator:
        return discord.Permissions.all()
    for wanted in ({guild_id}, set(member_roles) - {guild_id}, {user_id}):
        allow = deny = 0
        for overwrite in overwrites:
            if int(overwrite["id"]) in wanted:
                allow |= int(overwrite.get("allow", 0))
                deny |= int(overwrite.get("deny", 0))
        base.handle_overwrite(allow, deny)
    return base if base.view_channel else discord.Permissions.none()
