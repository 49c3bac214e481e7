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
from ponybot.schemas import ResizeMode, UploadedImage
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


def check_declared(content_type: str | None, size: int, limits: UploadSettings) -> str:
    """Before downloading: a type we take and a size within the limit. Returns the expected format."""
    declared = (content_type or "").split(";")[0].strip().lower()
    if declared not in ACCEPTED:
        raise MemberError("only PNG, JPEG or WebP pictures can be used (this file is {kind})", field="image",
                          kind=declared or "?")
    try:
        check_bytes(size, ImageLimits.of(limits))
    except ImageRefusal as error:
        raise refusal(error) from None
    return ACCEPTED[declared]


def refusal(error: ImageRefusal) -> MemberError:
    """The opener's refusal, in the member's language, about the ``image`` option."""
    return MemberError(error.template, field="image", **error.params)


def inspect(data: bytes, expected: str, limits: UploadSettings) -> tuple[bytes, int, int]:
    """Check downloaded bytes and decode them safely; returns (PNG bytes, width, height) as it stands upright."""
    actual = sniff(data)
    if actual is not None and actual != expected:  # no picture at all: the opener says so
        raise MemberError("this file says it is {declared} but it really is {actual}: upload the picture as it is",
                          field="image", declared=expected, actual=actual)
    try:
        rgb = open_image(data, ImageLimits.of(limits))
    except ImageRefusal as error:
        raise refusal(error) from None
    out = io.BytesIO()
    rgb.save(out, format="PNG", compress_level=1)
    return out.getvalue(), rgb.width, rgb.height


async def store_upload(bot: PonyBot, pending: PendingUpload, job_id: str) -> UploadedImage:
    """Download the attachment once, check it, and keep it in Redis for the job."""
    limits = bot.settings.uploads
    attachment = pending.attachment
    expected = check_declared(attachment.content_type, attachment.size, limits)
    try:
        data = await attachment.read()
    except discord.HTTPException as error:
        raise MemberError("Discord did not hand over the picture ({status}): upload it again", field="image",
                          status=error.status) from None
    png, width, height = await asyncio.to_thread(inspect, data, expected, limits)
    key = keys.upload(job_id)
    try:
        await bot.redis.set(key, png, ex=record_ttl(bot.settings.worker.result_ttl_s))
    except redis.RedisError as error:
        raise RedisUnavailableError(str(error)) from None
    return UploadedImage(key=key, filename=attachment.filename[:200], width=width, height=height,
                         strength=pending.strength, resize_mode=pending.resize_mode)
