"""The gallery's database: tables (SQLAlchemy Core), engines, and the Alembic upgrade run at start.

SQLite is the embedded default; PostgreSQL when ``gallery.database_url`` says so.
Search uses SQLite FTS5 (table ``images_fts``, kept by triggers) or a PostgreSQL
``tsvector`` column; both are created by the first migration.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
)
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

metadata = MetaData()

guilds = Table(
    "guilds", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("enabled", Boolean, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    #: the server's facts as Discord last told the bot token (gallery.access): owner, roles' permissions as JSON
    Column("owner_id", BigInteger, nullable=True),
    Column("roles", Text, nullable=True),
    Column("refreshed_at", DateTime(timezone=True), nullable=True),  #: None: never asked
)

#: A server's channels as Discord last told the bot token: who may open them is computed from these.
channels = Table(
    "channels", metadata,
    Column("guild_id", BigInteger, primary_key=True, autoincrement=False),
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("nsfw", Boolean, nullable=False),  #: age-restricted
    Column("everyone_view", Boolean, nullable=True),  #: @everyone can open it; None: not known yet (hidden)
    Column("overwrites", Text, nullable=False, default="[]", server_default="[]"),  #: Discord's JSON
)

images = Table(
    "images", metadata,
    Column("id", Integer, primary_key=True),
    Column("job_id", String(64), nullable=False),
    Column("idx", Integer, nullable=False),
    Column("user_id", BigInteger, nullable=False),
    Column("guild_id", BigInteger, nullable=False),
    Column("channel_id", BigInteger, nullable=False),
    Column("mode", String(8), nullable=False),
    Column("flagged", Boolean, nullable=False),
    Column("public", Boolean, nullable=False),  #: SFW-effective and not flagged: shown to everyone
    Column("hidden", Boolean, nullable=False, default=False),
    Column("kind", String(16), nullable=False),
    Column("request_prompt", Text, nullable=False),  #: what the member typed
    Column("request_negative", Text, nullable=False),
    Column("prompt", Text, nullable=False),  #: as generated, after the policy
    Column("negative_prompt", Text, nullable=False),
    Column("tags", Text, nullable=False),  #: tagger tags, space separated
    Column("seed", BigInteger, nullable=False),
    Column("steps", Integer, nullable=False),
    Column("cfg", Float, nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("sampler", String(32), nullable=False),
    Column("clip_skip", Integer, nullable=False),
    Column("quality_tags", Boolean, nullable=False),
    Column("model", String(200), nullable=False),
    Column("parameters", Text, nullable=False),  #: A1111 text from the PNG
    Column("command", Text, nullable=False),  #: the /generate line that makes this image
    Column("likes", Integer, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

users = Table(
    "users", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("name", String(100), nullable=False),
    Column("nsfw_opt_in", Boolean, nullable=False, default=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    #: moved on by signing out: a session cookie carrying an older one is no longer signed in
    Column("session_epoch", Integer, nullable=False, default=0, server_default="0"),
)

memberships = Table(
    "memberships", metadata,
    Column("user_id", BigInteger, primary_key=True, autoincrement=False),
    Column("guild_id", BigInteger, primary_key=True, autoincrement=False),
    Column("moderator", Boolean, nullable=False),
    #: when Discord last confirmed the membership, the roles and channel_access; None or older than
    #: gallery.permissions_max_age_s: nothing but public images and no moderator action (fail closed)
    Column("refreshed_at", DateTime(timezone=True), nullable=True),
)

#: The channels a member can open (VIEW_CHANNEL after overwrites), as of memberships.refreshed_at.
channel_access = Table(
    "channel_access", metadata,
    Column("user_id", BigInteger, primary_key=True, autoincrement=False),
    Column("guild_id", BigInteger, primary_key=True, autoincrement=False),
    Column("channel_id", BigInteger, primary_key=True, autoincrement=False),
    Column("nsfw", Boolean, nullable=False),  #: age-restricted: its images only for members who opted in
)

#: Every hide, who did it and when, and who undid it.
hides = Table(
    "hides", metadata,
    Column("id", Integer, primary_key=True),
    Column("image_id", Integer, ForeignKey("images.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("moderator_id", BigInteger, nullable=False),
    Column("hidden_at", DateTime(timezone=True), nullable=False),
    Column("undone_by", BigInteger, nullable=True),
    Column("undone_at", DateTime(timezone=True), nullable=True),
)

likes = Table(
    "likes", metadata,
    Column("image_id", Integer, ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", BigInteger, primary_key=True, autoincrement=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

reports = Table(
    "reports", metadata,
    Column("id", Integer, primary_key=True),
    Column("image_id", Integer, ForeignKey("images.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("user_id", BigInteger, nullable=False),
    Column("reason", String(500), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets its folder, WAL, foreign keys and a busy timeout."""
    parsed = make_url(url)
    options: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        options["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        options.update(pool_size=16, max_overflow=16, pool_pre_ping=True)
    engine = create_engine(parsed, **options)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Create or upgrade the schema to ``revision`` (Alembic, in one transaction)."""
    _migrate(engine, command.upgrade, revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    """Back to ``revision`` (``base``: nothing of the gallery left)."""
    _migrate(engine, command.downgrade, revision)


def _migrate(engine: Engine, step: Any, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        step(config, revision)
    log.info("gallery database at revision %s", revision)


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def optimize_search(engine: Engine) -> None:
    """Merge SQLite's full-text index into one segment (at start; PostgreSQL's GIN index needs nothing)."""
    if engine.dialect.name == "sqlite":
        with engine.begin() as db:
            db.exec_driver_sql("INSERT INTO images_fts(images_fts) VALUES('optimize')")
