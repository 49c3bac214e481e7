"""The Discord REST calls the gallery makes with the bot's token: a server (owner and roles), its channels
(overwrites and the age-restricted flag), one channel (a thread: its parent) and one member (roles).
Synchronous: called from worker threads (requests), the ingest thread and the refresh thread."""

from __future__ import annotations

import logging
from typing import Any

import httpx

from ponybot.errors import DiscordUnreachableError

log = logging.getLogger(__name__)
UNKNOWN_MEMBER = 10007  #: Discord's JSON error code for a member who is not (or no longer) in the server


class BotAPI:
    def __init__(self, api_base: str, token: str, timeout_s: float = 10.0) -> None:
        self.api_base = api_base.rstrip("/")
        self.client = httpx.Client(timeout=timeout_s, headers={"Authorization": f"Bot {token}",
                                                               "User-Agent": "DiscordBot (ponybot gallery, 1)"})

    def _get(self, path: str) -> httpx.Response:
        try:
            return self.client.get(self.api_base + path)
        except httpx.HTTPError as error:
            raise DiscordUnreachableError(f"GET {path}: {type(error).__name__}: {error}") from None

    def _json(self, path: str) -> Any:
        answer = self._get(path)
        if answer.status_code != 200:
            raise DiscordUnreachableError(f"GET {path}: HTTP {answer.status_code}")
        try:
            return answer.json()
        except ValueError:
            raise DiscordUnreachableError(f"GET {path}: not JSON") from None

    def guild(self, guild_id: int) -> dict[str, Any]:
        """``GET /guilds/{id}``: ``owner_id`` and ``roles`` (each with ``id`` and ``permissions``)."""
        found: dict[str, Any] = self._json(f"/guilds/{guild_id}")
        return found

    def channels(self, guild_id: int) -> list[dict[str, Any]]:
        """``GET /guilds/{id}/channels``: each with ``id``, ``nsfw`` and ``permission_overwrites``."""
        found: list[dict[str, Any]] = self._json(f"/guilds/{guild_id}/channels")
        return found

    def channel(self, channel_id: int) -> dict[str, Any] | None:
        """``GET /channels/{id}``: a thread's ``type`` and ``parent_id``; None when the channel is gone."""
        path = f"/channels/{channel_id}"
        answer = self._get(path)
        if answer.status_code == 404:
            return None
        if answer.status_code != 200:
            raise DiscordUnreachableError(f"GET {path}: HTTP {answer.status_code}")
        found: dict[str, Any] = answer.json()
        return found

    def member(self, guild_id: int, user_id: int) -> dict[str, Any] | None:
        """``GET /guilds/{id}/members/{user}``: ``roles``; None when the member is not in the server."""
        path = f"/guilds/{guild_id}/members/{user_id}"
        answer = self._get(path)
        if answer.status_code == 404:
            try:
                code = answer.json().get("code")
            except (ValueError, AttributeError):
                code = None
            if code == UNKNOWN_MEMBER:
                return None
        if answer.status_code != 200:
            raise DiscordUnreachableError(f"GET {path}: HTTP {answer.status_code}")
        found: dict[str, Any] = answer.json()
        return found

    def close(self) -> None:
        self.client.close()
