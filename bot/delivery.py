"""Delivery: ``done``/``failed`` events from the durable stream to Discord, exactly once.

The loop reads the events stream in a consumer group. An event is acknowledged
only after Discord accepted the message, and a ``delivered`` marker guards
against posting twice; after a restart the loop first re-reads what it had
taken but not acknowledged. While the interaction token has more than a minute
left, the deferred response is edited; after that the result goes to the
channel as a new message that mentions the member.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import discord
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import RedisError, ResponseError

from bot import messages
from bot.attachments import file_batches
from bot.features.gallery import gallery_link, gallery_on, hand_over
from bot.features.results import result_view
from bot.undelivered import undelivered
from ponybot import keys
from ponybot.connection import REDIS_AWAY
from ponybot.errors import SchemaVersionError
from ponybot.queue import StreamRead
from ponybot.schemas import JobEvent

if TYPE_CHECKING:
    from bot.client import PonyClient as PonyBot

log = logging.getLogger(__name__)

CONSUMER = "bot"
FILES_PER_MESSAGE = 10
BYTES_PER_REQUEST = 25 * 1024 * 1024
TOKEN_MARGIN_S = 60
#: Discord's codes for an interaction token or response that is no longer there.
TOKEN_GONE = {50027, 10015, 10008, 10062}


class RetryLater(Exception):
    """Discord or Redis failed in a way worth retrying; the event stays pending."""


def group_attachments(
    sizes: list[int], per_file: int, per_message: int = FILES_PER_MESSAGE, per_request: int = BYTES_PER_REQUEST
) -> tuple[list[list[int]], list[int]]:
    """Split file indexes into messages Discord accepts; also return those too large for any."""
    groups: list[list[int]] = []
    skipped = [index for index, size in enumerate(sizes) if size > per_file]
    current: list[int] = []
    total = 0
    for index, size in enumerate(sizes):
        if index in skipped:
            continue
        if current and (len(current) == per_message or total + size > per_request):
            groups.append(current)
            current, total = [], 0
        current.append(index)
        total += size
    if current:
        groups.append(current)
    return groups, skipped


async def ensure_group(conn: aioredis.Redis) -> None:
    try:
        await conn.xgroup_create(keys.EVENTS_STREAM, keys.DELIVERY_GROUP, id="$", mkstream=True)
    except ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


class Delivery:
    def __init__(self, bot: PonyBot) -> None:
        self.bot = bot
        self.task: asyncio.Task[None] | None = None
        self.stopping = asyncio.Event()

    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name="ponybot-delivery")

    async def stop(self) -> None:
        """Finish the delivery in hand, then stop."""
        self.stopping.set()
        if self.task:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self.task, timeout=30)

    async def run(self) -> None:
        conn = self.bot.redis
        backlog = True  # first what this consumer took before a restart and never acknowledged
        backoff = 0.5
        outage = self.bot.outage("the delivery of results")
        await self.bot.wait_until_ready()
        while not self.stopping.is_set():
            try:
                await ensure_group(conn)
                start = "0" if backlog else ">"
                read: StreamRead = await conn.xreadgroup(  # type: ignore[assignment, unused-ignore]
                    keys.DELIVERY_GROUP, CONSUMER, {keys.EVENTS_STREAM: start}, count=10,
                    block=None if backlog else 1000,
                )
                outage.back()
                entries = read[0][1] if read else []
                if backlog and not entries:
                    backlog = False
                for entry_id, fields in entries:
                    if self.stopping.is_set():
                        break
                    await self.handle(entry_id, fields)
                backoff = 0.5
                continue
            except REDIS_AWAY as error:  # a restart or a failover: waited out, then the pending events re-read
                pause = outage.away(error)
            except (RetryLater, RedisError, OSError) as error:
                log.warning("delivery paused %.1f s: %s", backoff, error)
                pause, backoff = backoff, min(backoff * 2, 30)
            backlog = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), pause)

    async def handle(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        conn = self.bot.redis
        try:
            event = JobEvent.model_validate_json(fields[b"data"])
        except (ValidationError, SchemaVersionError, KeyError) as error:
            log.error("event %s cannot be read and is dropped: %s", entry_id, error)
            await conn.xack(keys.EVENTS_STREAM, keys.DELIVERY_GROUP, entry_id)
            return
        job = event.job
        if job.origin is not None and not await conn.exists(keys.delivered(job.id)):
            await self.bot.tracker.finish(job.id)
            await self.post(event)
            await conn.set(keys.delivered(job.id), entry_id, ex=self.bot.settings.worker.result_ttl_s * 24)
            log.info("job=%s delivered (%s)", job.id, event.kind)
            await hand_over(self.bot, event)
        await conn.xack(keys.EVENTS_STREAM, keys.DELIVERY_GROUP, entry_id)

    async def load_files(self, event: JobEvent) -> list[tuple[str, bytes]]:
        files = []
        for image in event.images:
            if image.withheld or image.key is None:
                continue
            data: bytes | None = await self.bot.redis.get(image.key)  # type: ignore[assignment, unused-ignore]
            if data is not None:
                files.append((f"{'SPOILER_' if image.spoiler else ''}ponybot-{image.seed}.png", data))
        return files

    async def post(self, event: JobEvent) -> None:
        """Post one event; RetryLater when Discord might take it later, nothing when it never will."""
        files = await self.load_files(event) if event.kind == "done" else []
        expired = event.kind == "done" and len(files) < sum(not image.withheld for image in event.images)
        ref = event.job.interaction
        limit = ref.attachment_size_limit if ref else 10 * 1024 * 1024
        groups, skipped = group_attachments([len(data) for _name, data in files], limit)
        origin = event.job.origin
        gallery = (event.kind == "done" and origin is not None
                   and await gallery_on(self.bot, origin.guild_id, origin.channel_id))
        gallery_url = gallery_link(self.bot, f"/j/{event.job.id}") if gallery else None
        try:
            if ref is not None and ref.message_id is not None and ref.alive_for(TOKEN_MARGIN_S):
                try:
                    await self.send(event, files, groups, skipped, expired, webhook=True, gallery_url=gallery_url)
                    return
                except discord.HTTPException as error:
                    if error.status not in (401, 404) and error.code not in TOKEN_GONE:
                        raise
                    log.info("job=%s interaction token no longer valid (%s): posting in the channel",
                             event.job.id, error.code)
            if ref is not None and ref.ephemeral:
                log.warning("job=%s its member's results are private and its token has expired: not posted",
                            event.job.id)
                return
            await self.send(event, files, groups, skipped, expired, webhook=False, gallery_url=gallery_url)
        except (discord.NotFound, discord.Forbidden) as error:
            await undelivered(self.bot, event, files, groups, error)
        except (discord.DiscordServerError, discord.RateLimited, OSError, TimeoutError) as error:
            self.bot.metrics.delivery_errors.inc()
            raise RetryLater(f"job={event.job.id}: {error}") from error

    async def send(self, event: JobEvent, files: list[tuple[str, bytes]], groups: list[list[int]],
                   skipped: list[int], expired: bool, *, webhook: bool, gallery_url: str | None = None) -> None:
        mention = not webhook
        if event.kind == "failed":
            content = messages.failed(event, mention=mention)
        elif expired:
            content = messages.failed(event.model_copy(update={"error_code": "expired"}), mention=mention)
            groups = []
        else:
            content = messages.done(event, mention=mention)
            if skipped:
                content += "\n" + messages.too_large(messages.locale_of(event), len(skipped))
        view = result_view(event, gallery_url) if not expired else discord.ui.View()
        batches = file_batches(files, groups)
        first = batches[0] if batches else []
        origin = event.job.origin
        assert origin is not None
        allowed = discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(origin.user_id)])
        if webhook:
            ref = event.job.interaction
            assert ref is not None and ref.message_id is not None
            hook = discord.Webhook.partial(ref.application_id, ref.token, client=self.bot)
            await hook.edit_message(ref.message_id, content=content, attachments=first, allowed_mentions=allowed,
                                    view=view)
            for batch in batches[1:]:
                await hook.send(files=batch, wait=True, ephemeral=ref.ephemeral)
            self.bot.metrics.deliveries.labels(event.kind, "interaction").inc()
            return
        channel: Any = self.bot.get_partial_messageable(origin.channel_id, guild_id=origin.guild_id)
        await channel.send(content, files=first, allowed_mentions=allowed, view=view)
        for batch in batches[1:]:
            await channel.send(files=batch)
        self.bot.metrics.deliveries.labels(event.kind, "channel").inc()
