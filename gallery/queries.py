"""Who sees what, and the pages of images: visibility rules, filters, search and keyset pagination.

Visibility, in one place for every list, search, image page and file:
- only servers whose moderators turned the gallery on, never a hidden image;
- everyone: SFW images no classifier flagged from channels @everyone can open that are not age-restricted;
- a signed-in member: also those of the channels they can open (``channel_access``, confirmed by Discord within
  ``gallery.permissions_max_age_s``); age-restricted channels and NSFW images only when they opted in.
Pages are keyset-paginated (``id`` for newest, ``(likes, id)`` for top) with opaque cursors.
A page with a search is time-limited (PostgreSQL's ``statement_timeout``, SQLite's progress handler): past
the limit the visitor gets :class:`SearchTooSlow`, asking for a narrower search, and the database goes on.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    column,
    false,
    func,
    literal_column,
    or_,
    select,
    table,
    text,
    true,
    tuple_,
)
from sqlalchemy.exc import OperationalError

from gallery.db import channel_access, channels, guilds, images, memberships
from ponybot.errors import SearchTooSlow

Order = Literal["new", "top"]
PERIODS = {"day": timedelta(days=1), "week": timedelta(days=7), "month": timedelta(days=30), "all": None}
MAX_TERMS = 16
#: SQLite virtual-machine steps between two looks at a search's clock (a few microseconds).
SQLITE_STEPS = 100
PG_QUERY_CANCELED = "57014"
TOO_SLOW = "This search took too long: try fewer or more specific words."
FTS = table("images_fts", column("rowid"))


class BadInput(ValueError):
    """Input the site refuses with a 400 and a message saying why."""


@dataclass(frozen=True)
class Viewer:
    user_id: int | None = None
    nsfw_opt_in: bool = False
    #: memberships Discord confirmed before this count for nothing (gallery.access.Access.since)
    fresh_since: datetime | None = None


@dataclass(frozen=True)
class Filters:
    q: str = ""
    model: str = ""
    sampler: str = ""
    size: tuple[int, int] | None = None
    since: date | None = None
    until: date | None = None
    user_id: int | None = None
    guild_id: int | None = None
    period: str = "all"


@dataclass
class Page:
    rows: list[Any]  #: sqlalchemy Rows of LIST_COLUMNS
    next_cursor: str | None
    extra: dict[str, Any] = field(default_factory=dict)


def visible(viewer: Viewer) -> ColumnElement[bool]:
    enabled = select(guilds.c.id).where(guilds.c.enabled == true())
    # "+ 0": the planner walks the index of the page's order (id, or likes and id) instead of one by server
    base = and_(images.c.hidden == false(), (images.c.guild_id + 0).in_(enabled))
    where = tuple_(images.c.guild_id + 0, images.c.channel_id)  # "+ 0": as above
    open_to_all = select(channels.c.guild_id, channels.c.id).where(channels.c.everyone_view == true(),
                                                                   channels.c.nsfw == false())
    everyone = and_(images.c.public == true(), where.in_(open_to_all))
    if viewer.user_id is None or viewer.fresh_since is None:
        return and_(base, everyone)
    opened = (select(channel_access.c.guild_id, channel_access.c.channel_id)
              .join(memberships, and_(memberships.c.user_id == channel_access.c.user_id,
                                      memberships.c.guild_id == channel_access.c.guild_id))
              .where(channel_access.c.user_id == viewer.user_id, memberships.c.refreshed_at >= viewer.fresh_since))
    if not viewer.nsfw_opt_in:
        member = and_(images.c.public == true(), where.in_(opened.where(channel_access.c.nsfw == false())))
    else:
        member = and_(or_(images.c.public == true(), images.c.mode == "nsfw"), where.in_(opened))
    return and_(base, or_(everyone, member))


def encode_cursor(*values: int) -> str:
    return base64.urlsafe_b64encode(":".join(str(v) for v in values).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, parts: int) -> tuple[int, ...]:
    """The values in an opaque cursor; a BadInput when it is not one this site made."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        values = tuple(int(part) for part in raw.split(":"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadInput("this page link is malformed: start again from the first page") from None
    if len(values) != parts or any(v < 0 or v > 2**62 for v in values) or len(cursor) > 64:
        raise BadInput("this page link is malformed: start again from the first page")
    return values


def search_terms(q: str, limit: int) -> list[str]:
    if len(q) > limit:
        raise BadInput(f"search is at most {limit} characters (got {len(q)})")
    return re.findall(r"\w+", q.lower())[:MAX_TERMS]


def search_clause(db: Connection, terms: list[str]) -> ColumnElement[bool]:
    if db.dialect.name == "postgresql":
        query = func.plainto_tsquery("simple", " ".join(terms))
        return literal_column("images.search").op("@@")(query)
    match = " ".join(f'"{term}"' for term in terms)
    return text("images_fts MATCH :match").bindparams(match=match)  # type: ignore[return-value, unused-ignore]


@contextlib.contextmanager
def time_limited(db: Connection, seconds: float | None) -> Iterator[None]:
    """The statements run inside stop after ``seconds`` (None: no limit) with :class:`SearchTooSlow`."""
    if seconds is None:
        yield
        return
    if db.dialect.name == "postgresql":
        # SET LOCAL: this transaction only; the pooled connection gets its default back when it ends
        db.exec_driver_sql(f"SET LOCAL statement_timeout = {max(1, round(seconds * 1000))}")
        try:
            yield
        except OperationalError as error:
            if getattr(error.orig, "sqlstate", None) == PG_QUERY_CANCELED:
                raise SearchTooSlow(TOO_SLOW) from None
            raise
        return
    raw: Any = db.connection.dbapi_connection
    deadline = time.monotonic() + seconds
    raw.set_progress_handler(lambda: int(time.monotonic() > deadline), SQLITE_STEPS)
    try:
        yield
    except OperationalError as error:
        if "interrupted" in str(error.orig):
            raise SearchTooSlow(TOO_SLOW) from None
        raise
    finally:
        raw.set_progress_handler(None, SQLITE_STEPS)


def filter_clauses(db: Connection, filters: Filters, max_search: int) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    terms = search_terms(filters.q, max_search)
    if terms:
        clauses.append(search_clause(db, terms))
    if filters.model:
        clauses.append(images.c.model == filters.model)
    if filters.sampler:
        clauses.append(images.c.sampler == filters.sampler)
    if filters.size:
        clauses += [images.c.width == filters.size[0], images.c.height == filters.size[1]]
    if filters.since:
        clauses.append(images.c.created_at >= datetime.combine(filters.since, datetime.min.time(), UTC))
    if filters.until:
        clauses.append(images.c.created_at < datetime.combine(filters.until + timedelta(days=1),
                                                              datetime.min.time(), UTC))
    if filters.user_id is not None:
        clauses.append(images.c.user_id == filters.user_id)
    if filters.guild_id is not None:
        clauses.append(images.c.guild_id == filters.guild_id)
    return clauses


LIST_COLUMNS = (images.c.id, images.c.job_id, images.c.idx, images.c.user_id, images.c.guild_id, images.c.mode,
                images.c.prompt, images.c.request_prompt, images.c.width, images.c.height, images.c.likes,
                images.c.created_at)


def list_images(db: Connection, viewer: Viewer, order: Order, filters: Filters, cursor: str | None, limit: int,
                max_search: int = 200, search_timeout_s: float | None = None) -> Page:
    """A page of images; with a search, time-limited to ``search_timeout_s``."""
    clauses = [visible(viewer), *filter_clauses(db, filters, max_search)]
    query = select(*LIST_COLUMNS)
    newest: ColumnElement[int] = images.c.id
    searching = bool(search_terms(filters.q, max_search))
    if searching and db.dialect.name == "sqlite":
        # FTS5 as the outer loop, newest match first: a page stops after its rows, however common the words
        query = query.select_from(FTS.join(images, images.c.id == FTS.c.rowid))
        newest = FTS.c.rowid
    if order == "top":
        if filters.period not in PERIODS:
            raise BadInput(f"period must be one of {', '.join(PERIODS)}")
        span = PERIODS[filters.period]
        if span is not None:
            clauses.append(images.c.created_at >= datetime.now(UTC) - span)
        if cursor:
            likes, last = decode_cursor(cursor, 2)
            clauses.append(tuple_(images.c.likes, images.c.id) < tuple_(likes, last))
        query = query.order_by(images.c.likes.desc(), images.c.id.desc())
    else:
        if cursor:
            (last,) = decode_cursor(cursor, 1)
            clauses.append(newest < last)
        query = query.order_by(newest.desc())
    with time_limited(db, search_timeout_s if searching else None):
        rows = list(db.execute(query.where(*clauses).limit(limit + 1)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = None
    if more and rows:
        tail = rows[-1]
        next_cursor = encode_cursor(tail.likes, tail.id) if order == "top" else encode_cursor(tail.id)
    return Page(rows, next_cursor)


def get_image(db: Connection, viewer: Viewer, image_id: int) -> Any:
    """One image if this viewer may see it; None for unknown, hidden and invisible alike (a 404, no leak)."""
    return db.execute(select(images).where(images.c.id == image_id, visible(viewer))).first()


def first_of_job(db: Connection, viewer: Viewer, job_id: str) -> int | None:
    row = db.execute(select(images.c.id).where(images.c.job_id == job_id, visible(viewer))
                     .order_by(images.c.idx).limit(1)).first()
    return row.id if row else None


def moderated(user_id: int, fresh_since: datetime) -> Any:
    """The servers this member moderates, as Discord confirmed within the setting (a subquery of ids)."""
    return select(memberships.c.guild_id).where(memberships.c.user_id == user_id, memberships.c.moderator.is_(True),
                                                memberships.c.refreshed_at >= fresh_since)


def is_moderator(db: Connection, viewer: Viewer, guild_id: int) -> bool:
    """A moderator of this server whose rights Discord confirmed within the setting (fail closed otherwise)."""
    if viewer.user_id is None or viewer.fresh_since is None:
        return False
    found = db.scalar(moderated(viewer.user_id, viewer.fresh_since).where(memberships.c.guild_id == guild_id))
    return found is not None

