"""Permissions that follow Discord: server and channel facts, per-member channel access, the hide log.

Existing images keep their channel ids; each channel they came from gets a ``channels`` row (age-restricted
when an NSFW image came from it) whose ``everyone_view`` is unknown (None) until the gallery asks Discord,
so a private channel's images are never shown meanwhile (a gallery without the bot token trusts them at start,
see gallery.server). Every stored membership must be confirmed again (``refreshed_at`` None).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    with op.batch_alter_table("guilds") as batch:
        batch.add_column(sa.Column("owner_id", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("roles", sa.Text, nullable=True))
        batch.add_column(sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("memberships") as batch:
        batch.add_column(sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "channels",
        sa.Column("guild_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("nsfw", sa.Boolean, nullable=False),
        sa.Column("everyone_view", sa.Boolean, nullable=True),
        sa.Column("overwrites", sa.Text, nullable=False, server_default="[]"),
    )
    op.create_table(
        "channel_access",
        sa.Column("user_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("guild_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("channel_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("nsfw", sa.Boolean, nullable=False),
    )
    op.create_table(
        "hides",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False,
                  index=True),
        sa.Column("moderator_id", sa.BigInteger, nullable=False),
        sa.Column("hidden_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("undone_by", sa.BigInteger, nullable=True),
        sa.Column("undone_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.execute("INSERT INTO channels (guild_id, id, nsfw, everyone_view, overwrites) "
               "SELECT guild_id, channel_id, MAX(CASE WHEN mode = 'nsfw' THEN 1 ELSE 0 END) = 1, NULL, '[]' "
               "FROM images GROUP BY guild_id, channel_id")


def downgrade() -> None:
    op.drop_table("hides")
    op.drop_table("channel_access")
    op.drop_table("channels")
    with op.batch_alter_table("memberships") as batch:
        batch.drop_column("refreshed_at")
    with op.batch_alter_table("guilds") as batch:
        batch.drop_column("refreshed_at")
        batch.drop_column("roles")
        batch.drop_column("owner_id")

