"""Ingest: the gallery stream from Redis into the store and the database, nothing lost.

The bot appends a :class:`~ponybot.gallery_messages.GalleryMessage` for every posted result
(and for each enable/disable, delete and forget-me) and keeps a copy of each PNG
under a gallery-owned key for ``gallery.handoff_ttl_s``. This loop reads the
stream in a consumer group; an entry is acknowledged only after its files are in
the store and its rows committed, so a database or store outage only delays it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import redis
from pydantic import ValidationError
from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from gallery.db import channel_access, channels, guilds, images, likes, memberships, reports, users
from gallery.store import ImageStore, file_names, read_result
from ponybot import keys
from ponybot.connection import OUTAGE_PATIENCE_S, REDIS_AWAY, Outage
from ponybot.errors import ImageRefusal, SchemaVersionError
from ponybot.gallery_messages import GalleryControl, GalleryMessage, GalleryPost
from ponybot.parameters import generate_line, parse_parameters
from ponybot.queue import StreamRead

log = logging.getLogger(__name__)


def ensure_group(conn: redis.Redis) -> None:
    try:
        conn.xgroup_create(keys.GALLERY_STREAM, keys.GALLERY_GROUP, id="0", mkstream=True)
    except redis.ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


def set_guild(db: Connection, guild_id: int, enabled: bool) -> None:
    now = datetime.now(UTC)
    if not db.execute(update(guilds).where(guilds.c.id == guild_id).values(enabled=enabled, updated_at=now)).rowcount:
        db.execute(insert(guilds).values(id=guild_id, enabled=enabled, updated_at=now))


class Ingest:
    def __init__(self, engine: Engine, store: ImageStore, conn: redis.Redis, consumer: str = "gallery",
                 changed: Callable[[], None] | None = None, *, outage_patience_s: float = OUTAGE_PATIENCE_S,
                 where: str = "", new_channel: Callable[[int], None] | None = None) -> None:
        self.engine, self.store, self.conn, self.consumer = engine, store, conn, consumer
        self.changed = changed  #: called after rows changed (the site's cached pages are then stale)
        #: asks Discord about a channel met for the first time (given its server); None: no bot token, so the
        #: bot's word is taken (the channel is open to @everyone, age-restricted as the job's origin says)
        self.new_channel = new_channel
        self.outage = Outage("the gallery's ingest", outage_patience_s, where=where)

    def run(self, stopping: threading.Event) -> None:
        """Consume until ``stopping`` is set; first what was taken and never acknowledged."""
        backlog, backoff = True, 0.5
        while not stopping.is_set():
            try:
                ensure_group(self.conn)
                count = self.step(backlog=backlog, block_ms=1000)
                self.outage.back()
                backlog = backlog and count > 0
                backoff = 0.5
                continue
            except REDIS_AWAY as error:  # a restart or a failover: waited out, then the pending entries re-read
                pause = self.outage.away(error)
            except (redis.RedisError, SQLAlchemyError, OSError) as error:
                log.warning("gallery ingest paused %.1f s: %s", backoff, error)
                pause, backoff = backoff, min(backoff * 2, 30)
            backlog = True
            stopping.wait(pause)

    def step(self, *, backlog: bool = False, block_ms: int | None = None) -> int:
        """Handle one batch; returns how many entries were read."""
        read: StreamRead = self.conn.xreadgroup(  # type: ignore[assignment, unused-ignore]
            keys.GALLERY_GROUP, self.consumer, {keys.GALLERY_STREAM: "0" if backlog else ">"}, count=20,
            block=None if backlog else block_ms)
        entries = read[0][1] if read else []
        for entry_id, fields in entries:
            self.handle(entry_id, fields)
        return len(entries)

    def drain(self) -> int:
        """Everything waiting now, pending first (tests, and a start after an outage)."""
        ensure_group(self.conn)
        total = 0
        for backlog in (True, False):
            while count := self.step(backlog=backlog):
                total += count
        return total

    def handle(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            message = GalleryMessage.model_validate_json(fields[b"data"])
        except (ValidationError, SchemaVersionError, KeyError) as error:
            log.error("gallery entry %s cannot be read and is dropped: %s", entry_id, error)
            self.conn.xack(keys.GALLERY_STREAM, keys.GALLERY_GROUP, entry_id)
            return
        item = message.item
        if isinstance(item, GalleryPost):
            handed = self.store_post(item)
        else:
            self.apply(item)
            handed = []
        self.conn.xack(keys.GALLERY_STREAM, keys.GALLERY_GROUP, entry_id)
        if self.changed is not None:
            self.changed()
        if handed:
            self.conn.delete(*handed)

    def store_post(self, post: GalleryPost) -> list[str]:
        """Files first (idempotent), then the rows in one transaction; returns the Redis copies to drop."""
        job, origin = post.job, post.job.origin
        if origin is None or origin.guild_id is None:
            log.warning("job=%s has no server: not kept in the gallery", job.id)
            return []
        rows = []
        for image in post.images:
            png = self.conn.get(image.key)
            if not isinstance(png, bytes):
                log.error("job=%s image %d expired before the gallery stored it", job.id, image.index)
                continue
            try:
                thumb, text = read_result(png)
            except ImageRefusal as error:
                log.error("job=%s image %d is not a PNG the gallery can read, skipped: %s", job.id, image.index,
                          error)
                continue
            png_name, thumb_name = file_names(job.id, image.index)
            self.store.put(png_name, png)
            self.store.put(thumb_name, thumb)
            request = job.request
            rows.append(dict(
                job_id=job.id, idx=image.index, user_id=origin.user_id, guild_id=origin.guild_id,
                channel_id=origin.channel_id, mode=post.mode, flagged=image.flagged,
                public=post.mode == "sfw" and not image.flagged, hidden=False, kind=job.kind.value,
                request_prompt=request.prompt, request_negative=request.negative_prompt, prompt=post.prompt,
                negative_prompt=post.negative_prompt, tags=" ".join(image.tags), seed=image.seed,
                steps=request.steps, cfg=request.cfg, width=image.width, height=image.height,
                sampler=request.sampler.value, clip_skip=request.clip_skip, quality_tags=job.quality_tags,
                model=parse_parameters(text).get("Model", "") if text else "", parameters=text, likes=0,
                command=generate_line(request.model_copy(update={"count": 1}), image.seed, job.quality_tags),
                created_at=job.created_at))
        with self.engine.begin() as db:
            if db.execute(select(guilds.c.id).where(guilds.c.id == origin.guild_id)).first() is None:
                set_guild(db, origin.guild_id, True)
            known = set(db.scalars(select(images.c.idx).where(images.c.job_id == job.id)))
            fresh = [row for row in rows if row["idx"] not in known]
            if fresh:
                db.execute(insert(images), fresh)
            met = db.execute(select(channels.c.id).where(channels.c.guild_id == origin.guild_id,
                                                         channels.c.id == origin.channel_id)).first() is None
            if met:
                db.execute(insert(channels).values(guild_id=origin.guild_id, id=origin.channel_id,
                                                   nsfw=origin.channel_nsfw,
                                                   everyone_view=None if self.new_channel else True))
        if met and self.new_channel is not None:
            self.new_channel(origin.guild_id)
        log.info("job=%s %d image(s) kept in the gallery", job.id, len(rows))
        return [image.key for image in post.images]

    def apply(self, control: GalleryControl) -> None:
        with self.engine.begin() as db:
            if control.kind == "guild" and control.guild_id is not None:
                set_guild(db, control.guild_id, bool(control.enabled))
                log.info("gallery %s for server %s", "on" if control.enabled else "off", control.guild_id)
                return
            if control.kind == "delete_job" and control.job_id:
                where = images.c.job_id == control.job_id
            elif control.kind == "forget_member" and control.user_id is not None:
                where = images.c.user_id == control.user_id
                liked = select(likes.c.image_id).where(likes.c.user_id == control.user_id)
                db.execute(update(images).where(images.c.id.in_(liked)).values(likes=images.c.likes - 1))
                for table in (likes, reports, memberships, channel_access):
                    db.execute(delete(table).where(table.c.user_id == control.user_id))
                db.execute(delete(users).where(users.c.id == control.user_id))
            else:
                log.error("gallery control without its target, ignored: %s", control)
                return
            gone = db.execute(select(images.c.job_id, images.c.idx).where(where)).all()
            db.execute(delete(images).where(where))
        for job_id, index in gone:
            for name in file_names(job_id, index):
                with contextlib.suppress(FileNotFoundError):
                    self.store.delete(name)
        log.info("gallery %s: %d image(s) removed", control.kind, len(gone))
