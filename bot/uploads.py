"""Pictures members upload for img2img: checked, downloaded once, stored in Redis for the worker.

The worker never fetches a Discord CDN link (they expire); it reads the PNG the bot
stored under :func:`ponybot.keys.upload`, which expires with the job's record. Checks,
in order, each refusal naming the ``image`` option: the declared content type and size
(before downloading), then what :func:`ponybot.images.open_image` refuses of any picture from
outside (the size again after the download, the magic bytes: PNG, JPEG or WebP, the pixel count
read from the file's header before anything is decoded, so decompression bombs never reach the
decoder, then a full decode), and the type the magic bytes say against the one declared.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord
import redis

from bot.i18n import MemberError
from ponybot import keys
from ponybot.errors import ImageRefusal, RedisUnavailableError
from ponybot.images import ImageLimits, check_bytes, open_image, sniff
from ponybot.queue import record_ttl
from ponybot.schemas import InpaintSpec, ResizeMode, UploadedImage
from ponybot.settings import UploadSettings

if TYPE_CHECKING:
    from bot.client import PonyClient as PonyBot

#: content type -> Pillow format name
ACCEPTED = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}


@dataclass(frozen=True)
class PendingUpload:
    """An attachment a member gave to /generate, before it is downloaded."""

    attachment: discord.Attachment
    strength: float
    resize_mode: ResizeMode
    mask: discord.Attachment | None = None  #: an inpaint mask (white = redraw), checked as the picture is
    inpaint: InpaintSpec | None = None  #: how the mask is used (its key filled in once it is stored)


def check_declared(content_type: str | None, size: int, limits: UploadSettings, field: str = "image") -> str:
    """Before downloading: a type we take and a size within the limit. Returns the expected format.
    ``field``: the option the file came in (``image`` or ``mask``), named in a refusal."""
    declared = (content_type or "").split(";")[0].strip().lower()
    if declared not in ACCEPTED:
        raise MemberError("only PNG, JPEG or WebP pictures can be used (this file is {kind})", field=field,
                          kind=declared or "?")
    try:
        check_bytes(size, ImageLimits.of(limits))
    except ImageRefusal as error:
        raise refusal(error, field) from None
    return ACCEPTED[declared]


def refusal(error: ImageRefusal, field: str = "image") -> MemberError:
    """The opener's refusal, in the member's language, about the ``field`` option."""
    return MemberError(error.template, field=field, **error.params)


def inspect(data: bytes, expected: str, limits: UploadSettings, field: str = "image") -> tuple[bytes, int, int]:
    """Check downloaded bytes and decode them safely; returns (PNG bytes, width, height) as it stands upright."""
    actual = sniff(data)
    if actual is not None and actual != expected:  # no picture at all: the opener says so
        raise MemberError("this file says it is {declared} but it really is {actual}: upload the picture as it is",
                          field=field, declared=expected, actual=actual)
    try:
        rgb = open_image(data, ImageLimits.of(limits))
    except ImageRefusal as error:
        raise refusal(error, field) from None
    out = io.BytesIO()
    rgb.save(out, format="PNG", compress_level=1)
    return out.getvalue(), rgb.width, rgb.height


async def download(bot: PonyBot, attachment: discord.Attachment, key: str, field: str) -> tuple[int, int]:
    """Download ``attachment`` once, check it, keep it as PNG under ``key`` for the job; its size."""
    limits = bot.settings.uploads
    expected = check_declared(attachment.content_type, attachment.size, limits, field)
    try:
        data = await attachment.read()
    except discord.HTTPException as error:
        raise MemberError("Discord did not hand over the picture ({status}): upload it again", field=field,
                          status=error.status) from None
    png, width, height = await asyncio.to_thread(inspect, data, expected, limits, field)
    try:
        await bot.redis.set(key, png, ex=record_ttl(bot.settings.worker.result_ttl_s))
    except redis.RedisError as error:
        raise RedisUnavailableError(str(error)) from None
    return width, height


async def store_upload(bot: PonyBot, pending: PendingUpload, job_id: str) -> tuple[UploadedImage, InpaintSpec | None]:
    """The picture (and the mask, with one) downloaded once, checked, and kept in Redis for the job."""
    attachment = pending.attachment
    width, height = await download(bot, attachment, keys.upload(job_id), "image")
    inpaint = None
    if pending.mask is not None:
        await download(bot, pending.mask, keys.upload_mask(job_id), "mask")
        inpaint = (pending.inpaint or InpaintSpec()).model_copy(update={"mask_key": keys.upload_mask(job_id)})
    return UploadedImage(key=keys.upload(job_id), filename=attachment.filename[:200], width=width, height=height,
                         strength=pending.strength, resize_mode=pending.resize_mode), inpaint
