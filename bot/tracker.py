"""The queued message while a job waits and runs: position and ETA, then step i of n with a preview.

Edits are throttled to one per ``discord.progress_edit_interval_s`` per message and
skipped when nothing changed; discord.py waits out any 429 Discord answers. The
delivery loop calls :meth:`Tracker.finish` before it posts the result, so a late
progress edit can never overwrite it. A restarted bot picks up the messages of the
jobs still queued or running (their interaction tokens outlive the restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import discord
from pydantic import ValidationError
from redis.exceptions import RedisError

from bot import messages
from ponybot import keys
from ponybot.connection import REDIS_AWAY
from ponybot.errors import SchemaVersionError
from ponybot.queue import QueueSnapshot, job_model, queue_snapshot, unfinished_jobs
from ponybot.schemas import Job, ProgressEvent

if TYPE_CHECKING:
    from bot.client import PonyClient as PonyBot

log = logging.getLogger(__name__)

TICK_S = 0.5
FINISHED_KEPT = 2048
BAR = 12


@dataclass
class Tracked:
    job: Job
    progress: ProgressEvent | None = None
    preview: bytes | None = None
    shown: str = ""
    last_edit: float = 0.0
    finished: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def progress_text(event: ProgressEvent, locale: str = "en-US") -> str:
    done = round(BAR * event.step / max(1, event.total))
    return messages.progress(locale, event.step, event.total, f"{'▰' * done}{'▱' * (BAR - done)}")


class Tracker:
    def __init__(self, bot: PonyBot) -> None:
        self.bot = bot
        self.jobs: dict[str, Tracked] = {}
        #: jobs whose result was posted: a worker can finish before queue_job() gets to track()
        self.finished: deque[str] = deque(maxlen=FINISHED_KEPT)
        self.tasks: list[asyncio.Task[None]] = []

    def track(self, job: Job) -> None:
        """Keep this job's message up to date, unless its result was already posted."""
        if job.id in self.finished:
            return
        if job.interaction is not None and job.interaction.message_id is not None:
            self.jobs[job.id] = Tracked(job, last_edit=time.monotonic())

    async def finish(self, job_id: str) -> None:
        """Stop editing this job's message (waits for an edit in flight); a later track() is ignored."""
        self.finished.append(job_id)
        tracked = self.jobs.pop(job_id, None)
        if tracked is not None:
            async with tracked.lock:
                tracked.finished = True

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self.listen(), name="ponybot-progress"),
                      asyncio.create_task(self.tick(), name="ponybot-tracker"),
                      asyncio.create_task(self.resume(), name="ponybot-tracker-resume")]

    async def resume(self) -> None:
        """After a restart: go on updating the messages of jobs queued or running before it."""
        try:
            jobs = await asyncio.to_thread(unfinished_jobs, self.bot.sync_redis)
        except RedisError as error:
            log.warning("could not read the jobs queued before this start (%s): their messages stay as they are",
                        error)
            return
        for job in jobs:
            self.track(job)
        if jobs:
            log.info("tracking %d job(s) queued or running before this start", len(jobs))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def listen(self) -> None:
        """Progress events from the workers (lossy pub/sub: a missed one is replaced by the next, and the tick
        reads the queue itself)."""
        outage = self.bot.outage("the progress messages")
        while True:
            try:
                async with self.bot.redis.pubsub() as pubsub:
                    await pubsub.subscribe(keys.PROGRESS_CHANNEL)
                    outage.back()
                    async for message in pubsub.listen():
                        if message["type"] != "message":
                            continue
                        try:
                            event = ProgressEvent.model_validate_json(message["data"])
                        except (ValidationError, SchemaVersionError):
                            continue
                        for job_id in event.job_ids:  # one event per batch: every job in it moved on
                            tracked = self.jobs.get(job_id)
                            if tracked is not None:
                                tracked.progress = event
                                tracked.preview = event.preview(job_id) or tracked.preview
            except REDIS_AWAY as error:  # a restart or a failover
                await asyncio.sleep(outage.away(error))
            except (RedisError, OSError) as error:
                log.warning("progress feed lost (%s): reconnecting", error)
                await asyncio.sleep(2)

    async def tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            await self.tick_once()

    async def tick_once(self) -> None:
        """Edit every message that is due: the queue is read at most once, for all the waiting jobs."""
        snapshot: QueueSnapshot | None = None
        due = [tracked for tracked in list(self.jobs.values()) if self.due(tracked)]
        for tracked in due:
            try:
                if tracked.progress is None and snapshot is None:
                    snapshot = await asyncio.to_thread(self.read_queue, due)
                await self.refresh(tracked, snapshot)
            except (RedisError, OSError, discord.HTTPException) as error:
                log.warning("job=%s progress edit failed: %s", tracked.job.id, error)
                tracked.last_edit = time.monotonic() + 5  # back off

    def read_queue(self, due: list[Tracked]) -> QueueSnapshot:
        """One read of the queues for the jobs in ``due`` (in a thread: the client is synchronous)."""
        return queue_snapshot(self.bot.sync_redis, sorted({job_model(tracked.job) for tracked in due}),
                              jobs=[tracked.job for tracked in due if tracked.progress is None])

    def due(self, tracked: Tracked) -> bool:
        """Whether this job's message may be edited now (a job whose token is expiring is dropped)."""
        ref = tracked.job.interaction
        if ref is None or ref.message_id is None or not ref.alive_for(60):
            self.jobs.pop(tracked.job.id, None)
            return False
        return time.monotonic() - tracked.last_edit >= self.bot.settings.discord.progress_edit_interval_s

    async def refresh(self, tracked: Tracked, snapshot: QueueSnapshot | None) -> None:
        """Edit the message to the job's progress, or to its place in ``snapshot`` while it waits."""
        ref = tracked.job.interaction
        locale = tracked.job.origin.locale if tracked.job.origin else "en-US"
        if ref is None or ref.message_id is None:
            return
        preview = None
        if tracked.progress is not None:
            text = progress_text(tracked.progress, locale)
            preview = tracked.preview if self.bot.settings.discord.progress_previews else None
            if preview is not None and len(preview) > ref.attachment_size_limit:
                preview = None  # this server's upload limit is smaller than a preview
        else:
            position = snapshot.positions.get(tracked.job.id) if snapshot is not None else None
            if snapshot is None or position is None:
                return  # taken by a worker: its first progress event comes next
            model = job_model(tracked.job)
            text = messages.queued(locale, position, snapshot.eta(position, model),
                                   on_demand=self.bot.settings.worker.on_demand,
                                   waiting_for=None if snapshot.workers.get(model) else model)
        if text == tracked.shown:
            return
        async with tracked.lock:
            if tracked.finished:
                return
            hook = discord.Webhook.partial(ref.application_id, ref.token, client=self.bot)
            files = [discord.File(io.BytesIO(preview), filename="preview.jpg")] if preview else []
            await hook.edit_message(ref.message_id, content=text, attachments=files)
            tracked.shown, tracked.last_edit = text, time.monotonic()
