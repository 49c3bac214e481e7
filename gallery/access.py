"""Permissions that follow Discord: what a signed-in member may see and do is never older than
``gallery.permissions_max_age_s``.

The bot's token asks Discord (:class:`gallery.discord_api.BotAPI`) for each server's owner, roles and channels
(kept in ``guilds`` and ``channels``: who may open a channel is computed from its overwrites by
:mod:`gallery.permissions`) and for each member's roles (giving ``memberships.moderator`` and the rows of
``channel_access``). A membership Discord has not confirmed within the setting counts for nothing: its NSFW
images and its moderator actions are refused (fail closed) while public SFW images stay visible. A member who
left a server loses the membership and every session (they sign in again).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from gallery.auth import end_sessions, session_user
from gallery.db import channel_access, channels, guilds, memberships
from gallery.discord_api import BotAPI
from gallery.permissions import Overwrite, can_view, is_moderator
from ponybot.errors import DiscordUnreachableError

log = logging.getLogger(__name__)
#: Announcement and public threads: whoever can open their channel can open them. A private thread's
#: images stay hidden (who was added to it is not asked).
PUBLIC_THREADS = (10, 11)


def parse_roles(raw: list[dict[str, Any]]) -> dict[int, int]:
    return {int(role["id"]): int(role.get("permissions") or 0) for role in raw}


class Access:
    """Refreshes server and member facts from Discord; without ``api`` (no bot token) it only trusts channels."""

    def __init__(self, engine: Engine, api: BotAPI | None, max_age_s: int) -> None:
        self.engine, self.api, self.max_age = engine, api, timedelta(seconds=max_age_s)
        self._locks: defaultdict[tuple[str, int], threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()
        #: (member, server) -> when Discord last failed to answer: not asked again for a while, so that an
        #: outage does not make every page of that member wait for a timeout
        self._failed: dict[tuple[int, int], float] = {}
        self.retry_s = min(30.0, float(max_age_s))

    def since(self) -> datetime:
        """Facts confirmed before this moment no longer count."""
        return datetime.now(UTC) - self.max_age

    def _lock(self, kind: str, key: int) -> threading.Lock:
        """One refresh at a time per server and per member in this process (another process's concurrent
        refresh loses its transaction on the primary keys: that is logged, the winner's rows count)."""
        with self._guard:
            return self._locks[kind, key]

    # -- servers ------------------------------------------------------------------------------------------
    def refresh_guild(self, guild_id: int) -> None:
        """The server's owner, roles and channels from Discord (DiscordUnreachableError when it cannot say)."""
        assert self.api is not None
        found = self.api.guild(guild_id)
        listed = self.api.channels(guild_id)
        with self.engine.connect() as db:
            before = set(db.scalars(select(channels.c.id).where(channels.c.guild_id == guild_id)))
        try:
            owner = int(found["owner_id"])
            roles = parse_roles(found["roles"])
            rows = {}
            for channel in listed:
                overwrites = [Overwrite.of(raw) for raw in channel.get("permission_overwrites") or []]
                rows[int(channel["id"])] = {
                    "guild_id": guild_id, "id": int(channel["id"]), "nsfw": bool(channel.get("nsfw")),
                    "everyone_view": can_view(guild_id, owner, None, [], roles, overwrites),
                    "overwrites": json.dumps([raw.__dict__ for raw in overwrites])}
            for thread_id in sorted(before - set(rows)):  # not in the list: a thread, or a channel gone
                thread = self.api.channel(thread_id)
                parent = rows.get(int(thread.get("parent_id") or 0)) if thread else None
                if thread is not None and parent is not None and int(thread["type"]) in PUBLIC_THREADS:
                    rows[thread_id] = {**parent, "id": thread_id}  # a public thread: as its channel
        except (KeyError, TypeError, ValueError) as error:
            raise DiscordUnreachableError(f"server {guild_id}: Discord's answer could not be read ({error})") from None
        with self._lock("guild", guild_id), self.engine.begin() as db:
            db.execute(update(guilds).where(guilds.c.id == guild_id).values(
                owner_id=owner, roles=json.dumps(roles), refreshed_at=datetime.now(UTC)))
            # only what this refresh read or learned: a channel ingest added meanwhile keeps its row for the next
            db.execute(delete(channels).where(channels.c.guild_id == guild_id, channels.c.id.in_(before | set(rows))))
            if rows:
                db.execute(insert(channels), list(rows.values()))
            if before != set(rows):  # a new channel: members' access is asked again
                db.execute(update(memberships).where(memberships.c.guild_id == guild_id).values(refreshed_at=None))
        log.info("server %s: %d channel(s) refreshed from Discord", guild_id, len(rows))

    def refresh_guild_logged(self, guild_id: int, meanwhile: str) -> bool:
        """:meth:`refresh_guild`, a failure logged with what it means ``meanwhile``; returns whether it worked."""
        try:
            self.refresh_guild(guild_id)
            return True
        except IntegrityError:
            log.info("server %s: refreshed by another process at the same time", guild_id)
        except DiscordUnreachableError as error:
            log.warning("server %s: Discord did not answer (%s); %s", guild_id, error, meanwhile)
        return False

    def refresh_guilds(self) -> int:
        """Every server whose facts are older than the setting (or never asked); returns how many answered."""
        if self.api is None:
            return 0
        with self.engine.connect() as db:
            stale = list(db.scalars(select(guilds.c.id).where(guilds.c.enabled.is_(True), or_(
                guilds.c.refreshed_at.is_(None), guilds.c.refreshed_at < self.since()))))
        return sum(self.refresh_guild_logged(guild_id, "its channels stay as they were, unknown ones hidden")
                   for guild_id in stale)

    def new_channel(self, guild_id: int) -> None:
        """Ingest met a channel it had no facts for: ask Discord now (a failure waits for the next refresh)."""
        if self.api is not None:
            self.refresh_guild_logged(guild_id, "the new channel's images stay hidden until it does")

    # -- members ------------------------------------------------------------------------------------------
    def stale_guilds(self, db: Connection, user_id: int) -> list[int]:
        """The member's servers in the gallery whose membership Discord has not confirmed within the setting."""
        return list(db.scalars(select(memberships.c.guild_id).join(guilds, guilds.c.id == memberships.c.guild_id)
                               .where(memberships.c.user_id == user_id, or_(
                                   memberships.c.refreshed_at.is_(None), memberships.c.refreshed_at < self.since()))))

    def refresh_member(self, user_id: int) -> None:
        """Confirm each of the member's stale memberships with Discord; one that cannot be confirmed stays stale
        (and counts for nothing), one that is gone is removed with the member's sessions."""
        if self.api is None:
            return
        with self._lock("member", user_id):
            with self.engine.connect() as db:
                stale = self.stale_guilds(db, user_id)
            for guild_id in stale:
                if time.monotonic() - self._failed.get((user_id, guild_id), -self.retry_s) < self.retry_s:
                    continue
                try:
                    self._refresh_membership(user_id, guild_id)
                    self._failed.pop((user_id, guild_id), None)
                except IntegrityError:
                    log.info("member %s in server %s: refreshed by another process at the same time", user_id,
                             guild_id)
                except DiscordUnreachableError as error:
                    self._failed[user_id, guild_id] = time.monotonic()
                    log.warning("member %s in server %s: Discord did not answer (%s); NSFW images and moderator "
                                "actions of that server refused until it does", user_id, guild_id, error)

    def _refresh_membership(self, user_id: int, guild_id: int) -> None:
        assert self.api is not None
        with self.engine.connect() as db:
            fresh = db.scalar(select(guilds.c.refreshed_at).where(guilds.c.id == guild_id))
        if fresh is None or _aware(fresh) < self.since():
            self.refresh_guild(guild_id)
        member = self.api.member(guild_id, user_id)
        with self.engine.begin() as db:
            mine = and_(memberships.c.user_id == user_id, memberships.c.guild_id == guild_id)
            db.execute(delete(channel_access).where(channel_access.c.user_id == user_id,
                                                    channel_access.c.guild_id == guild_id))
            if member is None:
                db.execute(delete(memberships).where(mine))
                end_sessions(db, user_id)
                log.info("member %s left server %s: membership removed, sessions ended", user_id, guild_id)
                return
            server = db.execute(select(guilds.c.owner_id, guilds.c.roles).where(guilds.c.id == guild_id)).one()
            roles = {int(key): value for key, value in json.loads(server.roles or "{}").items()}
            held = [int(role) for role in member.get("roles") or []]
            rows = []
            for channel in db.execute(select(channels).where(channels.c.guild_id == guild_id)):
                overwrites = [Overwrite(**raw) for raw in json.loads(channel.overwrites)]
                if can_view(guild_id, server.owner_id, user_id, held, roles, overwrites):
                    rows.append({"user_id": user_id, "guild_id": guild_id, "channel_id": channel.id,
                                 "nsfw": channel.nsfw})
            if rows:
                db.execute(insert(channel_access), rows)
            db.execute(update(memberships).where(mine).values(
                moderator=is_moderator(guild_id, server.owner_id, user_id, held, roles),
                refreshed_at=datetime.now(UTC)))

    def run(self, stopping: threading.Event) -> None:
        """Keep every server's facts younger than the setting (the gallery's refresh thread)."""
        pause = max(1.0, min(60.0, self.max_age.total_seconds() / 2))
        while not stopping.is_set():
            try:
                self.refresh_guilds()
            except Exception:  # the thread must live on: the next round tries again
                log.exception("the permission refresh failed; trying again in %.0f s", pause)
            stopping.wait(pause)


class MemberRefresh:
    """ASGI middleware inside SessionMiddleware: before a signed-in member's request is served, each of their
    memberships older than the setting is confirmed with Discord (a few ms when all are fresh: one query)."""

    def __init__(self, app: ASGIApp, *, access: Access) -> None:
        self.app, self.access = app, access

    def _refresh(self, user_id: int) -> None:
        with self.access.engine.connect() as db:
            if not self.access.stale_guilds(db, user_id):
                return
        self.access.refresh_member(user_id)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = scope.get("session")
        if scope["type"] == "http" and session and self.access.api is not None:
            user_id = session_user(session)
            if user_id is not None:
                await run_in_threadpool(self._refresh, user_id)
        await self.app(scope, receive, send)


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored as UTC)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
