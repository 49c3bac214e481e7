"""A Discord on loopback: the gateway and the REST routes ponybot uses, for the real discord.py client.

It keeps what the bot posted so tests can assert on it, validates every request
body against Discord's OpenAPI description (``rejected`` lists what failed), and
answers like Discord does: 429 with ``retry_after``, 413/40005 for an oversize
file, 400/30015 past 10 files, 401/50027 once an interaction token expired.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.discord_fake.members import MemberActions
from tests.discord_fake.model import (
    EPHEMERAL,
    MANAGE_CHANNELS,
    MANAGE_GUILD,
    MEMBER,
    MEMBER_PERMISSIONS,
    MODERATOR,
    OTHER_MEMBER,
    TOKEN_LIFE_S,
    Interaction,
    iso,
    snowflake,
    user,
)
from tests.discord_fake.openapi import OpenAPIValidator
from tests.discord_fake.permissions import GuildPermissions, error as _error, ok as _json

#: Importable from here too, as tests always have.
__all__ = ["MANAGE_CHANNELS", "MANAGE_GUILD", "MEMBER", "MEMBER_PERMISSIONS", "MODERATOR", "OTHER_MEMBER",
           "FakeDiscord", "Interaction"]

#: When a REST request reached the fake (time.time()), before its parsing and validation.
ARRIVED = web.RequestKey("arrived", float)


@dataclass
class Request:
    method: str
    path: str
    body: Any
    files: list[tuple[str, bytes]]
    status: int = 200
    at: float = field(default_factory=time.monotonic)


class FakeDiscord(MemberActions, GuildPermissions):
    def __init__(self, *, attachment_limit: int = 10 * 1024 * 1024) -> None:
        self.validator = OpenAPIValidator()
        self.app_id = snowflake()
        self.bot_user = self.user(snowflake(), "ponybot", bot=True)
        self.guild_id = snowflake()
        self.channels: dict[int, dict[str, Any]] = {}
        self.attachment_limit = attachment_limit
        self.interactions: dict[str, Interaction] = {}
        self.messages: dict[int, dict[str, Any]] = {}
        self.files: dict[int, bytes] = {}
        self.cdn_downloads: list[str] = []
        self.synced: list[Any] = []  #: every command registration body (PUT), as the bot sent it
        self.requests: list[Request] = []
        self.rejected: list[str] = []
        self.rate_limits: list[list[Any]] = []  # [method, path regex, remaining, retry_after]
        self.sockets: list[web.WebSocketResponse] = []
        self.seq = 0
        self.changed = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.port = 0
        self._init_permissions()
        self.add_channel("general")

    # -- set-up -----------------------------------------------------------------------------------
    user = staticmethod(user)

    def add_channel(self, name: str, *, nsfw: bool = False) -> int:
        channel_id = snowflake()
        self.channels[channel_id] = {"id": str(channel_id), "type": 0, "name": name, "position": len(self.channels),
                                     "nsfw": nsfw, "guild_id": str(self.guild_id), "permission_overwrites": []}
        return channel_id

    @property
    def default_channel(self) -> int:
        return next(iter(self.channels))

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{attachment_id}/{filename}", self._cdn)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for socket in self.sockets:
            await socket.close()
        if self.runner:
            await self.runner.cleanup()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # -- gateway ----------------------------------------------------------------------------------
    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self.sockets.append(socket)
        await socket.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}}))
        async for message in socket:
            if message.type != WSMsgType.TEXT:
                continue
            payload = json.loads(message.data)
            if payload["op"] == 1:
                await socket.send_str(json.dumps({"op": 11}))
            elif payload["op"] in (2, 6):
                await self._send(socket, "READY", {
                    "v": 10, "user": self.bot_user, "guilds": [{"id": str(self.guild_id), "unavailable": True}],
                    "session_id": secrets.token_hex(8), "resume_gateway_url": self.gateway_url,
                    "application": {"id": str(self.app_id), "flags": 0}, "private_channels": [],
                    "relationships": [],
                })
                await self._send(socket, "GUILD_CREATE", self.guild_payload())
        self.sockets.remove(socket)
        return socket

    async def _send(self, socket: web.WebSocketResponse, event: str, data: dict[str, Any]) -> None:
        self.seq += 1
        await socket.send_str(json.dumps({"op": 0, "t": event, "s": self.seq, "d": data}))

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        for socket in list(self.sockets):
            await self._send(socket, event, data)

    def guild_payload(self) -> dict[str, Any]:
        everyone = {"id": str(self.guild_id), "name": "@everyone", "permissions": str(MEMBER_PERMISSIONS),
                    "position": 0, "color": 0, "hoist": False, "managed": False, "mentionable": False, "flags": 0}
        # the bot's own permissions come from its role (and channel overwrites), not from the members' @everyone
        return {
            "id": str(self.guild_id), "name": "Ponyville", "icon": None, "owner_id": "1",
            "roles": [everyone, *self.bot_roles()],
            "emojis": [], "stickers": [], "features": [], "channels": list(self.channels.values()),
            "members": [{"user": self.bot_user, "roles": [str(self.bot_role_id)], "flags": 0, "joined_at": iso(),
                         "deaf": False, "mute": False}],
            "member_count": 2, "large": False, "threads": [], "voice_states": [], "presences": [],
            "stage_instances": [], "guild_scheduled_events": [], "premium_tier": 0, "preferred_locale": "en-US",
            "nsfw_level": 0, "mfa_level": 0, "verification_level": 0, "explicit_content_filter": 0,
            "default_message_notifications": 0, "system_channel_flags": 0, "unavailable": False,
            "joined_at": iso(), "afk_timeout": 300,
        }

    async def set_nsfw(self, channel_id: int, nsfw: bool) -> None:
        self.channels[channel_id]["nsfw"] = nsfw
        await self.dispatch("CHANNEL_UPDATE", self.channels[channel_id])

    # -- REST -------------------------------------------------------------------------------------
    async def _rest(self, request: web.Request) -> web.Response:
        request[ARRIVED] = time.time()  # before this fake's own parsing and schema validation
        path = "/" + request.match_info["tail"]
        body, files = await self._body(request)
        self.requests.append(Request(request.method, path, body, files))
        if body is not None:
            content_type = "multipart/form-data" if files else "application/json"
            if problem := self.validator.validate(request.method, path, body, content_type):
                self.rejected.append(problem)
                return _error(400, 50035, f"Invalid Form Body: {problem}")
        if refusal := self.unauthorized(request) or self.forbidden(request.method, path, body, files):
            self.requests[-1].status = refusal.status
            return refusal
        for limit in self.rate_limits:
            if limit[0] == request.method and re.search(limit[1], path) and limit[2] > 0:
                limit[2] -= 1
                self.requests[-1].status = 429
                return _json({"message": "You are being rate limited.", "retry_after": limit[3], "global": False},
                             429, {"Via": "1.1 google", "X-RateLimit-Scope": "user"})
        response = await self._answer(request, path, body, files)
        self.requests[-1].status = response.status
        self.changed.set()
        return response

    async def _answer(self, request: web.Request, path: str, body: Any, files: list[tuple[str, bytes]]
                      ) -> web.Response:
        if len(files) > 10:
            return _error(400, 30015, "Maximum number of attachments in a message reached (10)")
        if any(len(data) > self.attachment_limit for _name, data in files):
            return _error(413, 40005, "Request entity too large")
        for pattern, handler in self.routes():
            if request.method == pattern[0] and (match := re.fullmatch(pattern[1], path)):
                response: web.Response = await handler(request, body or {}, files, *match.groups())
                return response
        return _error(404, 0, f"fake Discord has no route {request.method} {path}")

    def rate_limit(self, method: str, path_regex: str, times: int = 1, retry_after: float = 0.3) -> None:
        self.rate_limits.append([method, path_regex, times, retry_after])

    def routes(self) -> list[tuple[tuple[str, str], Callable[..., Any]]]:
        return [
            (("GET", r"/users/@me"), self._me),
            (("GET", r"/oauth2/applications/@me"), self._application),
            (("PUT", r"/applications/\d+/commands"), self._sync),
            (("PUT", r"/applications/\d+/guilds/\d+/commands"), self._sync),
            (("POST", r"/interactions/(\d+)/([^/]+)/callback"), self._callback),
            (("POST", r"/webhooks/\d+/([^/]+)"), self._followup),
            (("PATCH", r"/webhooks/\d+/([^/]+)/messages/(@original|\d+)"), self._edit_webhook_message),
            (("DELETE", r"/webhooks/\d+/([^/]+)/messages/(@original|\d+)"), self._delete_webhook_message),
            (("POST", r"/channels/(\d+)/messages"), self._channel_message),
            (("PATCH", r"/channels/\d+/messages/(\d+)"), self._edit_message),
            (("DELETE", r"/channels/\d+/messages/(\d+)"), self._delete_message),
            *self.guild_routes(),
        ]

    async def _body(self, request: web.Request) -> tuple[Any, list[tuple[str, bytes]]]:
        if request.method in ("GET", "DELETE") or not request.can_read_body:
            return None, []
        if request.content_type.startswith("multipart/"):
            body: Any = None
            files: list[tuple[str, bytes]] = []
            reader = await request.multipart()
            async for part in reader:
                data = await part.read()  # type: ignore[union-attr]
                if part.name == "payload_json":
                    body = json.loads(data)
                else:
                    files.append((part.filename or "file", bytes(data)))  # type: ignore[union-attr]
            return body, files
        return await request.json(), []

    async def _me(self, *_: Any) -> web.Response:
        return _json(self.bot_user)

    async def _application(self, *_: Any) -> web.Response:
        return _json({"id": str(self.app_id), "name": "ponybot", "description": "", "icon": None,
                      "bot_public": True, "bot_require_code_grant": False, "owner": self.bot_user,
                      "verify_key": "0" * 64, "flags": 0})

    async def _sync(self, request: web.Request, body: Any, *_: Any) -> web.Response:
        self.synced.append(body)
        return _json([{**command, "id": str(snowflake()), "application_id": str(self.app_id), "version": "1"}
                      for command in body])

    async def _callback(self, request: web.Request, body: dict[str, Any], files: list[tuple[str, bytes]],
                        interaction_id: str, token: str) -> web.Response:
        interaction = self.interactions.get(token)
        if interaction is None or str(interaction.id) != interaction_id or time.time() - interaction.sent > 3:
            return _error(404, 10062, "Unknown interaction")
        if interaction.responded:
            return _error(400, 40060, "Interaction has already been acknowledged.")
        interaction.responded, interaction.callback_type = True, body["type"]
        interaction.responded_at = request.get(ARRIVED, time.time())
        data = body.get("data") or {}
        interaction.ephemeral = bool((data.get("flags") or 0) & EPHEMERAL)
        if body["type"] == 8:
            interaction.choices = list(data.get("choices") or [])
        resource = None
        if body["type"] in (4, 5):
            message = self._store(interaction.channel_id, data, files, interaction=interaction)
            interaction.original_id = int(message["id"])
            if body["type"] == 4:
                resource = {"type": 4, "message": self.public(message)}
        elif body["type"] == 7:
            resource = {"type": 7, "message": self.public(self._edit(interaction.message_id or 0, data, files))}
        answer = {"interaction": {"id": str(interaction.id), "type": 2, "response_message_id":
                                  str(interaction.original_id or ""), "response_message_loading": body["type"] == 5,
                                  "response_message_ephemeral": interaction.ephemeral}}
        if resource:
            answer["resource"] = resource
        return _json(answer)

    def _token(self, token: str) -> Interaction | None:
        interaction = self.interactions.get(token)
        if interaction is None or time.time() - interaction.created > TOKEN_LIFE_S:
            return None
        return interaction

    async def _followup(self, request: web.Request, body: dict[str, Any], files: list[tuple[str, bytes]],
                        token: str) -> web.Response:
        interaction = self._token(token)
        if interaction is None:
            return _error(401, 50027, "Invalid Webhook Token")
        message = self._store(interaction.channel_id, body, files, interaction=interaction)
        interaction.followups.append(int(message["id"]))
        return _json(self.public(message))

    async def _edit_webhook_message(self, request: web.Request, body: dict[str, Any], files: list[tuple[str, bytes]],
                                    token: str, message_ref: str) -> web.Response:
        interaction = self._token(token)
        if interaction is None:
            return _error(401, 50027, "Invalid Webhook Token")
        message_id = interaction.original_id if message_ref == "@original" else int(message_ref)
        if message_id is None or message_id not in self.messages:
            return _error(404, 10008, "Unknown Message")
        return _json(self.public(self._edit(message_id, body, files)))

    async def _delete_webhook_message(self, request: web.Request, body: Any, files: Any, token: str,
                                      message_ref: str) -> web.Response:
        interaction = self._token(token)
        if interaction is None:
            return _error(401, 50027, "Invalid Webhook Token")
        message_id = interaction.original_id if message_ref == "@original" else int(message_ref)
        if self.messages.pop(message_id or 0, None) is None:
            return _error(404, 10008, "Unknown Message")
        return web.Response(status=204)

    async def _channel_message(self, request: web.Request, body: dict[str, Any], files: list[tuple[str, bytes]],
                               channel_id: str) -> web.Response:
        if int(channel_id) not in self.channels and int(channel_id) not in self.dms:
            return _error(404, 10003, "Unknown Channel")
        if refused := self.dm_refused(int(channel_id)):
            return refused
        return _json(self.public(self._store(int(channel_id), body, files)))

    async def _edit_message(self, request: web.Request, body: dict[str, Any], files: list[tuple[str, bytes]],
                            message_id: str) -> web.Response:
        if int(message_id) not in self.messages:
            return _error(404, 10008, "Unknown Message")
        return _json(self.public(self._edit(int(message_id), body, files)))

    async def _delete_message(self, request: web.Request, body: Any, files: Any, message_id: str) -> web.Response:
        if self.messages.pop(int(message_id), None) is None:
            return _error(404, 10008, "Unknown Message")
        return web.Response(status=204)

    # -- messages ---------------------------------------------------------------------------------
    def _attachments(self, files: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
        attachments = []
        for name, data in files:
            attachment_id = snowflake()
            self.files[attachment_id] = data
            url = f"http://127.0.0.1:{self.port}/attachments/{attachment_id}/{name}"
            attachments.append({"id": str(attachment_id), "filename": name, "size": len(data), "url": url,
                                "proxy_url": url, "content_type": "image/png"})
        return attachments

    def _store(self, channel_id: int, data: dict[str, Any], files: list[tuple[str, bytes]], *,
               interaction: Interaction | None = None) -> dict[str, Any]:
        message = {
            "id": str(snowflake()), "type": 0 if interaction is None else 20, "channel_id": str(channel_id),
            "author": self.bot_user, "content": data.get("content") or "", "embeds": data.get("embeds") or [],
            "components": data.get("components") or [], "attachments": self._attachments(files),
            "flags": data.get("flags") or 0, "timestamp": iso(), "edited_timestamp": None, "tts": False,
            "mention_everyone": False, "mentions": [], "mention_roles": [], "pinned": False,
            "_interaction_token": interaction.token if interaction else None,
            "_allowed_mentions": data.get("allowed_mentions"),
            "_edits": 0,
        }
        self.messages[int(message["id"])] = message
        return message

    def _edit(self, message_id: int, data: dict[str, Any], files: list[tuple[str, bytes]]) -> dict[str, Any]:
        message = self.messages[message_id]
        for key in ("content", "embeds", "components", "flags"):
            if key in data:
                message[key] = data[key] if data[key] is not None else ([] if key != "content" else "")
        if "attachments" in data:
            keep = {str(item["id"]) for item in data["attachments"] or []}
            message["attachments"] = [a for a in message["attachments"] if a["id"] in keep]
            message["attachments"] += self._attachments(files)
        message["edited_timestamp"] = iso()
        message["_edits"] += 1
        return message

    @staticmethod
    def public(message: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in message.items() if not key.startswith("_")}

    # -- what tests look at -----------------------------------------------------------------------
    def attachment_bytes(self, message: dict[str, Any]) -> list[bytes]:
        return [self.files[int(attachment["id"])] for attachment in message["attachments"]]

    def channel_messages(self, channel_id: int) -> list[dict[str, Any]]:
        return [m for m in self.messages.values() if int(m["channel_id"]) == channel_id]

    def original(self, interaction: Interaction) -> dict[str, Any] | None:
        return self.messages.get(interaction.original_id or 0)

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 300.0) -> Any:
        """Wait until ``predicate()`` is truthy (re-checked whenever the bot calls the fake).

        The deadline is generous (a busy 2-core machine); the wait ends as soon as the predicate holds.
        """
        deadline = time.monotonic() + timeout
        while True:
            if result := predicate():
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the fake Discord never saw what the test waited for")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.25))
            except TimeoutError:
                pass
