"""Signing in with Discord (OAuth2, scopes ``identify guilds``), sessions and CSRF.

Sessions live in a signed cookie (Starlette's SessionMiddleware: HttpOnly, SameSite=Lax,
Secure when the public URL is HTTPS, expiring after ``gallery.session_max_age_s``) and
hold only the member's id, name, CSRF token and session epoch; the member's servers are kept
in the ``memberships`` table, replaced at each sign-in and confirmed with Discord by :mod:`gallery.access`.

The server can end a member's sessions: each request's cookie must carry the epoch the
member's row holds (:class:`SessionCheck`). Signing out moves the epoch on, which ends every
session of that member on every device; forget-me deletes the row, which ends them too; a
changed ``gallery.session_secret`` invalidates every cookie's signature.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx
from sqlalchemy import Connection, Engine, delete, insert, select, update
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gallery.db import memberships, users
from gallery.permissions import MODERATOR_BITS
from ponybot.settings import GallerySettings

SCOPES = "identify guilds"


def csrf_token(request: Request) -> str:
    """This session's CSRF token (made on first use); empty when the site has no sessions."""
    if "session" not in request.scope:
        return ""
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def session_user(session: dict[str, Any]) -> int | None:
    user_id = session.get("user_id")
    return int(user_id) if isinstance(user_id, int | str) and str(user_id).isdigit() else None


def signed_in(request: Request) -> int | None:
    if "session" not in request.scope:
        return None
    return session_user(request.session)


def session_epoch(db: Connection, user_id: int) -> int | None:
    """The epoch a live session of this member carries; None when the gallery no longer knows them."""
    epoch = db.scalar(select(users.c.session_epoch).where(users.c.id == user_id))
    return None if epoch is None else int(epoch)


def end_sessions(db: Connection, user_id: int) -> None:
    """Every session of this member ends at its next request, on every device."""
    db.execute(update(users).where(users.c.id == user_id).values(session_epoch=users.c.session_epoch + 1))


class SessionCheck:
    """ASGI middleware inside SessionMiddleware: a session whose member was signed out elsewhere, forgotten or
    never stored is emptied before the app sees it (and its cookie is dropped with the response)."""

    def __init__(self, app: ASGIApp, *, engine: Engine) -> None:
        self.app = app
        self.engine = engine

    def _epoch(self, user_id: int) -> int | None:
        with self.engine.connect() as db:
            return session_epoch(db, user_id)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = scope.get("session")
        if scope["type"] == "http" and session:
            user_id = session_user(session)
            if user_id is not None and session.get("epoch") != await run_in_threadpool(self._epoch, user_id):
                session.clear()
        await self.app(scope, receive, send)


#: The most fields any of the gallery's forms has (a CSRF token, a checkbox or a reason), with room to spare.
MAX_FORM_FIELDS = 8


async def checked_form(request: Request) -> tuple[int, dict[str, str]]:
    """A POST's form from a signed-in member with the right CSRF token, else a 401 or 403.

    The session is checked before the body is read: a signed-out request is refused unread. The form is
    parsed with no file parts and a handful of fields (its bytes are bounded by :class:`gallery.bodies.BodyLimit`).
    """
    user_id = signed_in(request)
    if user_id is None:
        raise HTTPException(401, "You are not signed in, or your session has expired: sign in again.")
    parsed = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)  # more: a 400 naming what
    form = {key: value for key, value in parsed.items() if isinstance(value, str)}
    expected = request.session.get("csrf")
    given = form.get("csrf", "")
    if not isinstance(expected, str) or not hmac.compare_digest(expected.encode(), given.encode()):
        raise HTTPException(403, "This form's security token is not valid: reload the page and try again.")
    return user_id, form


class DiscordOAuth:
    """The three calls of the authorization-code flow, against ``discord.api_base``."""

    def __init__(self, settings: GallerySettings, api_base: str, client_secret: str) -> None:
        assert settings.client_id is not None
        self.client_id = settings.client_id
        self.authorize = settings.authorize_url
        self.api_base = api_base.rstrip("/")
        self.secret = client_secret
        self.redirect_uri = settings.public_url.rstrip("/") + "/auth/callback"

    def authorize_url(self, state: str) -> str:
        query = {"response_type": "code", "client_id": str(self.client_id), "scope": SCOPES, "state": state,
                 "redirect_uri": self.redirect_uri, "prompt": "none"}
        return f"{self.authorize}?{urlencode(query)}"

    async def sign_in(self, code: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The member and their servers for an authorization code."""
        async with httpx.AsyncClient(timeout=10) as client:
            token = await client.post(f"{self.api_base}/oauth2/token", auth=(str(self.client_id), self.secret), data={
                "grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri})
            if token.status_code != 200:
                raise HTTPException(400, "Discord did not accept this sign-in: try again.")
            headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
            me = await client.get(f"{self.api_base}/users/@me", headers=headers)
            guilds = await client.get(f"{self.api_base}/users/@me/guilds", headers=headers)
        if me.status_code != 200 or guilds.status_code != 200:
            raise HTTPException(502, "Discord did not answer the sign-in: try again later.")
        return me.json(), guilds.json()


def remember_member(db: Connection, me: dict[str, Any], guilds: list[dict[str, Any]]) -> tuple[int, str]:
    """Save the member's name and servers (moderator where Manage Server or owner); returns (id, name).

    The memberships are not yet confirmed (``refreshed_at`` None): they count once Discord confirms them with
    the member's roles (:class:`gallery.access.MemberRefresh`, at the next request)."""
    user_id = int(me["id"])
    name = str(me.get("global_name") or me.get("username") or user_id)[:100]
    now = datetime.now(UTC)
    if not db.execute(update(users).where(users.c.id == user_id).values(name=name, updated_at=now)).rowcount:
        db.execute(insert(users).values(id=user_id, name=name, nsfw_opt_in=False, updated_at=now))
    db.execute(delete(memberships).where(memberships.c.user_id == user_id))
    rows = [{"user_id": user_id, "guild_id": int(guild["id"]),
             "moderator": bool(guild.get("owner")) or bool(int(guild.get("permissions", 0)) & MODERATOR_BITS)}
            for guild in guilds]
    if rows:
        db.execute(insert(memberships), rows)
    return user_id, name


def opted_in(db: Connection, user_id: int | None) -> bool:
    if user_id is None:
        return False
    return bool(db.scalar(select(users.c.nsfw_opt_in).where(users.c.id == user_id)))
