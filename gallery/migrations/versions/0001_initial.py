"""The gallery's first schema: guilds, images (with search), users, memberships, likes, reports.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

SQLITE_FTS = [
    "CREATE VIRTUAL TABLE images_fts USING fts5(prompt, tags, content='images', content_rowid='id', "
    "tokenize='unicode61')",
    "CREATE TRIGGER images_fts_insert AFTER INSERT ON images BEGIN "
    "INSERT INTO images_fts(rowid, prompt, tags) VALUES (new.id, new.prompt, new.tags); END",
    "CREATE TRIGGER images_fts_delete AFTER DELETE ON images BEGIN "
    "INSERT INTO images_fts(images_fts, rowid, prompt, tags) VALUES ('delete', old.id, old.prompt, old.tags); END",
]
POSTGRES_FTS = [
    "ALTER TABLE images ADD COLUMN search tsvector GENERATED ALWAYS AS "
    "(to_tsvector('simple', prompt || ' ' || tags)) STORED",
    "CREATE INDEX images_search ON images USING GIN (search)",
]


def upgrade() -> None:
    now = sa.DateTime(timezone=True)
    op.create_table(
        "guilds",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("updated_at", now, nullable=False),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column("guild_id", sa.BigInteger, nullable=False),
        sa.Column("channel_id", sa.BigInteger, nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("flagged", sa.Boolean, nullable=False),
        sa.Column("public", sa.Boolean, nullable=False),
        sa.Column("hidden", sa.Boolean, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("request_prompt", sa.Text, nullable=False),
        sa.Column("request_negative", sa.Text, nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("negative_prompt", sa.Text, nullable=False),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("steps", sa.Integer, nullable=False),
        sa.Column("cfg", sa.Float, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("sampler", sa.String(32), nullable=False),
        sa.Column("clip_skip", sa.Integer, nullable=False),
        sa.Column("quality_tags", sa.Boolean, nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("parameters", sa.Text, nullable=False),
        sa.Column("command", sa.Text, nullable=False),
        sa.Column("likes", sa.Integer, nullable=False),
        sa.Column("created_at", now, nullable=False),
        sa.UniqueConstraint("job_id", "idx", name="images_job_idx"),
    )
    op.create_index("images_user", "images", ["user_id", "id"])
    op.create_index("images_guild", "images", ["guild_id", "id"])
    op.create_index("images_likes", "images", ["likes", "id"])
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("nsfw_opt_in", sa.Boolean, nullable=False),
        sa.Column("updated_at", now, nullable=False),
    )
    op.create_table(
        "memberships",
        sa.Column("user_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("guild_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("moderator", sa.Boolean, nullable=False),
    )
    op.create_table(
        "likes",
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("user_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("created_at", now, nullable=False),
    )
    op.create_table(
        "reports",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("created_at", now, nullable=False),
    )
    op.create_index("ix_reports_image_id", "reports", ["image_id"])
    statements = POSTGRES_FTS if op.get_bind().dialect.name == "postgresql" else SQLITE_FTS
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in ("images_fts_insert", "images_fts_delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS images_fts")
    for table in ("reports", "likes", "memberships", "users", "images", "guilds"):
        op.drop_table(table)
