"""Results the bot could not post in their channel (it lacks a permission there), counted per channel so
``/status`` and the bot's metrics can show moderators where to look."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from ponybot import keys


async def count_undelivered(conn: aioredis.Redis, guild_id: int | None, channel_id: int) -> int:
    """One more undelivered result in ``channel_id``; the guild's counts expire a week after the latest."""
    key = keys.undelivered(guild_id)
    async with conn.pipeline(transaction=True) as pipe:
        pipe.hincrby(key, str(channel_id), 1)
        pipe.expire(key, keys.UNDELIVERED_TTL_S)
        total, _ = await pipe.execute()
    return int(total)


def undelivered_counts(conn: redis.Redis, guild_id: int | None) -> dict[int, int]:
    """Channel id -> undelivered results in the guild (the last week)."""
    raw: dict[bytes, bytes] = conn.hgetall(keys.undelivered(guild_id))  # type: ignore[assignment, unused-ignore]
    return {int(channel): int(count) for channel, count in raw.items()}
