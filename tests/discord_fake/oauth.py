"""Discord's OAuth2 on loopback: authorize, token, ``users/@me`` and ``users/@me/guilds``, and the bot
token's server routes (:mod:`tests.discord_fake.guilds`).

A threaded HTTP server, so both a browser and the gallery's own HTTP client can use it
from synchronous tests. ``user`` and ``guilds`` say who signs in next; the authorize page
approves at once (as Discord does for an app the member already authorized) and checks
what Discord checks: the client id, the redirect URI, the scopes, single-use codes,
the client secret at the token endpoint and the bearer token afterwards.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

from tests.discord_fake.guilds import FakeGuilds
from tests.discord_fake.model import MANAGE_GUILD

BOT_TOKEN = "fake-bot-token"


@dataclass
class OAuthFake:
    client_id: int
    client_secret: str
    user: dict[str, Any] = field(default_factory=dict)
    guilds: list[dict[str, Any]] = field(default_factory=list)
    codes: dict[str, tuple[str, dict[str, Any], list[dict[str, Any]]]] = field(default_factory=dict)
    tokens: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None
    #: the servers as the bot's token sees them (the gallery's permission refresh)
    bot: FakeGuilds = field(default_factory=lambda: FakeGuilds(BOT_TOKEN))

    @property
    def base(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def api_base(self) -> str:
        return self.base + "/api/v10"

    @property
    def authorize_url(self) -> str:
        return self.base + "/oauth2/authorize"

    def sign_in_as(self, user_id: int, name: str, guilds: dict[int, bool]) -> None:
        """The next sign-in is this member, in these servers (True: with Manage Server); the bot's view of those
        servers gets the member, with the moderator role where True."""
        self.user = {"id": str(user_id), "username": name, "global_name": name, "discriminator": "0",
                     "avatar": None}
        self.guilds = [{"id": str(guild), "name": f"server {guild}", "icon": None, "owner": False,
                        "permissions": str(MANAGE_GUILD if moderator else 1024), "features": []}
                       for guild, moderator in guilds.items()]
        for guild, moderator in guilds.items():
            self.bot.join(guild, user_id, moderator)

    def start(self) -> OAuthFake:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def reply(self, status: int, body: Any = None, location: str | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlparse(self.path)
                fake.requests.append(f"GET {url.path}")
                if url.path == "/oauth2/authorize":
                    query = {k: v[0] for k, v in parse_qs(url.query).items()}
                    scopes = set(query.get("scope", "").split())
                    if query.get("client_id") != str(fake.client_id) or query.get("response_type") != "code":
                        return self.reply(400, {"error": "invalid_client"})
                    if scopes != {"identify", "guilds"} or "redirect_uri" not in query:
                        return self.reply(400, {"error": "invalid_scope"})
                    code = secrets.token_urlsafe(16)
                    fake.codes[code] = (query["redirect_uri"], dict(fake.user), list(fake.guilds))
                    target = query["redirect_uri"] + "?" + urlencode({"code": code, "state": query.get("state", "")})
                    return self.reply(302, location=target)
                bot = fake.bot.route(url.path, self.headers.get("Authorization", ""))
                if bot is not None:
                    return self.reply(*bot)
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if token not in fake.tokens:
                    return self.reply(401, {"message": "401: Unauthorized", "code": 0})
                user, guilds = fake.tokens[token]
                if url.path == "/api/v10/users/@me":
                    return self.reply(200, user)
                if url.path == "/api/v10/users/@me/guilds":
                    return self.reply(200, guilds)
                return self.reply(404, {"message": "404: Not Found", "code": 0})

            def do_POST(self) -> None:
                url = urlparse(self.path)
                fake.requests.append(f"POST {url.path}")
                if url.path != "/api/v10/oauth2/token":
                    return self.reply(404, {"message": "404: Not Found", "code": 0})
                expected = base64.b64encode(f"{fake.client_id}:{fake.client_secret}".encode()).decode()
                if self.headers.get("Authorization") != f"Basic {expected}":
                    return self.reply(401, {"error": "invalid_client"})
                length = int(self.headers.get("Content-Length", 0))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                entry = fake.codes.pop(form.get("code", ""), None)
                if form.get("grant_type") != "authorization_code" or entry is None:
                    return self.reply(400, {"error": "invalid_grant"})
                if form.get("redirect_uri") != entry[0]:
                    return self.reply(400, {"error": "invalid_grant", "error_description": "redirect_uri mismatch"})
                token = secrets.token_urlsafe(24)
                fake.tokens[token] = (entry[1], entry[2])
                return self.reply(200, {"access_token": token, "token_type": "Bearer", "expires_in": 604800,
                                        "refresh_token": secrets.token_urlsafe(24), "scope": "identify guilds"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
