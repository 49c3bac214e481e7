"""A finished job the bot may not post in its channel: counted for moderators, sent to its member by DM."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from redis.exceptions import RedisError

from bot import messages
from bot.attachments import file_batches
from ponybot.schemas import JobEvent
from ponybot.undelivered import count_undelivered

if TYPE_CHECKING:
    from bot.client import PonyClient as PonyBot

log = logging.getLogger(__name__)


async def undelivered(bot: PonyBot, event: JobEvent, files: list[tuple[str, bytes]], groups: list[list[int]],
                      error: discord.HTTPException) -> None:
    """Count it in its channel (``/status``, the metric), then DM the member when they accept DMs. Never raises:
    the gallery hand-over that follows keeps the images either way."""
    origin = event.job.origin
    assert origin is not None
    log.error("job=%s cannot be posted in channel %s (%s): sending it to its member by DM", event.job.id,
              origin.channel_id, error)
    bot.metrics.undelivered.labels(str(origin.guild_id or 0), str(origin.channel_id)).inc()
    try:
        await count_undelivered(bot.redis, origin.guild_id, origin.channel_id)
    except (RedisError, OSError) as failure:
        log.warning("job=%s undelivered count not kept: %s", event.job.id, failure)
    if event.kind == "done":
        content = messages.undelivered_dm(event, origin.channel_id)
    else:
        content = messages.failed(event, mention=False)
    try:
        channel = await bot.create_dm(discord.Object(origin.user_id))
        batches = file_batches(files, groups)
        await channel.send(content, files=batches[0] if batches else [])
        for batch in batches[1:]:
            await channel.send(files=batch)
        bot.metrics.deliveries.labels(event.kind, "dm").inc()
        log.info("job=%s sent to its member by DM", event.job.id)
    except discord.HTTPException as failure:  # DMs closed (50007), or Discord refused: the gallery still has it
        log.warning("job=%s not sent by DM either: %s", event.job.id, failure)
