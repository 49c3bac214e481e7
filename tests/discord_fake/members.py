"""What members do in the fake Discord: slash commands (with attachments), autocomplete, button clicks,
and an interaction token left to expire. A mixin of :class:`~tests.discord_fake.server.FakeDiscord`."""

from __future__ import annotations

import secrets
import time
from typing import Any

from aiohttp import web

from tests.discord_fake.model import MEMBER, MEMBER_PERMISSIONS, TOKEN_LIFE_S, Interaction, iso, snowflake


class MemberActions:
    # -- interactions -----------------------------------------------------------------------------
    def _interaction(self, kind: int, data: dict[str, Any], user: dict[str, Any], channel_id: int | None,
                     permissions: int, age_s: float, message: dict[str, Any] | None = None,
                     locale: str = "en-US") -> Interaction:
        channel_id = channel_id or self.default_channel
        created = time.time() - age_s
        interaction = Interaction(snowflake(created), secrets.token_urlsafe(24), int(user["id"]), channel_id,
                                  created, time.time(), int(message["id"]) if message else None)
        self.interactions[interaction.token] = interaction
        payload: dict[str, Any] = {
            "id": str(interaction.id), "application_id": str(self.app_id), "type": kind, "token": interaction.token,
            "version": 1, "attachment_size_limit": self.attachment_limit, "guild_id": str(self.guild_id),
            "guild": {"id": str(self.guild_id), "locale": "en-US", "features": []},
            "channel_id": str(channel_id), "channel": self.channels[channel_id],
            "member": {"user": user, "roles": [], "flags": 0, "permissions": str(permissions), "joined_at": iso(),
                       "deaf": False, "mute": False},
            "app_permissions": str(self.bot_permissions(channel_id)), "locale": locale, "guild_locale": "en-US",
            "entitlements": [], "context": 0, "authorizing_integration_owners": {"0": str(self.guild_id)},
            "data": data,
        }
        if message is not None:
            payload["message"] = message
        self._pending = self.dispatch("INTERACTION_CREATE", payload)
        return interaction

    def upload(self, filename: str, data: bytes, content_type: str | None, *, size: int | None = None
               ) -> dict[str, Any]:
        """A file a member attaches to a slash command: served on loopback like Discord's CDN.

        Pass the returned attachment as an option's value. ``size`` is what Discord reports
        (default: the real size; a test can make it lie)."""
        attachment_id = snowflake()
        self.files[attachment_id] = data
        url = f"http://127.0.0.1:{self.port}/attachments/{attachment_id}/{filename}"
        attachment = {"id": str(attachment_id), "filename": filename, "size": len(data) if size is None else size,
                      "url": url, "proxy_url": url, "ephemeral": True}
        if content_type is not None:
            attachment["content_type"] = content_type
        return attachment

    async def _cdn(self, request: web.Request) -> web.Response:
        self.cdn_downloads.append(request.path)
        data = self.files.get(int(request.match_info["attachment_id"]))
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="application/octet-stream")

    async def slash(self, name: str, options: dict[str, Any] | None = None, *, user: dict[str, Any] | None = None,
                    channel_id: int | None = None, permissions: int = MEMBER_PERMISSIONS, age_s: float = 0.0,
                    subcommand: str | None = None, locale: str = "en-US") -> Interaction:
        """Send a slash command as a member (in their ``locale``); returns the interaction to follow it by."""
        typed, attachments = [], {}
        for key, value in (options or {}).items():
            if isinstance(value, dict):  # an attachment from upload(): its id, resolved beside
                attachments[value["id"]] = value
                typed.append({"name": key, "type": 11, "value": value["id"]})
            else:
                typed.append({"name": key, "type": option_type(value), "value": value})
        if subcommand:
            typed = [{"name": subcommand, "type": 1, "options": typed}]
        data: dict[str, Any] = {"id": str(snowflake()), "name": name, "type": 1, "options": typed,
                                "guild_id": str(self.guild_id)}
        if attachments:
            data["resolved"] = {"attachments": attachments}
        interaction = self._interaction(2, data, user or MEMBER, channel_id, permissions, age_s, locale=locale)
        await self._pending
        return interaction

    async def autocomplete(self, name: str, options: dict[str, Any], focused: str, *,
                           user: dict[str, Any] | None = None, locale: str = "en-US") -> Interaction:
        """A member typing in option ``focused`` of /``name``; the bot's choices arrive as a type 8 callback."""
        typed = [{"name": key, "type": option_type(value), "value": value, **({"focused": True} if key == focused
                                                                                else {})}
                 for key, value in options.items()]
        data = {"id": str(snowflake()), "name": name, "type": 1, "options": typed, "guild_id": str(self.guild_id)}
        interaction = self._interaction(4, data, user or MEMBER, None, MEMBER_PERMISSIONS, 0.0, locale=locale)
        await self._pending
        return interaction

    def choices(self, interaction: Interaction) -> list[dict[str, Any]] | None:
        """The choices the bot answered an autocomplete with (None until it answered)."""
        for request in self.requests:
            if request.path.endswith(f"/{interaction.token}/callback") and request.body.get("type") == 8:
                found: list[dict[str, Any]] = request.body["data"]["choices"]
                return found
        return None

    async def click(self, message_id: int, custom_id: str, *, user: dict[str, Any] | None = None,
                    permissions: int = MEMBER_PERMISSIONS) -> Interaction:
        message = self.messages[message_id]
        data = {"custom_id": custom_id, "component_type": 2}
        interaction = self._interaction(3, data, user or MEMBER, int(message["channel_id"]), permissions, 0.0,
                                        message=self.public(message))
        await self._pending
        return interaction

    def expire(self, interaction: Interaction) -> None:
        interaction.created -= TOKEN_LIFE_S + 1


def option_type(value: Any) -> int:
    if isinstance(value, bool):
        return 5
    if isinstance(value, int):
        return 4
    if isinstance(value, float):
        return 10
    return 3
