"""Pictures members upload for img2img: checked, downloaded once, stored in Redis for the worker.

The worker never fetches a Discord CDN link (they expire); it reads the PNG the bot
stored under :func:`ponybot.keys.upload`, which expires with the job's record. Checks,
in order, each refusal naming the ``image`` option: the declared content type and size
(before downloading), the magic bytes (PNG, JPEG or WebP, and the type they declared),
the size again after the download, the pixel count read from the file's header before
anything is decoded (decompression bombs never reach the decoder), then a full decode.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord
import redis
from PIL import Image, UnidentifiedImageError

from bot.i18n import MemberError
from ponybot import keys
from ponybot.errors import RedisUnavailableError
from ponybot.queue import record_ttl
from ponybot.schemas import ResizeMode, UploadedImage
from ponybot.settings import UploadSettings

if TYPE_CHECKING:
    from bot.app import PonyBot

#: content type -> Pillow format name
ACCEPTED = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}


@dataclass(frozen=True)
class PendingUpload:
    """An attachment a member gave to /generate, before it is downloaded."""

    attachment: discord.Attachment
    strength: float
    resize_mode: ResizeMode


def sniff(data: bytes) -> str | None:
    """The format the bytes really are (from their magic numbers), or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def check_declared(content_type: str | None, size: int, limits: UploadSettings) -> str:
    """Before downloading: a type we take and a size within the limit. Returns the expected format."""
    declared = (content_type or "").split(";")[0].strip().lower()
    if declared not in ACCEPTED:
        raise MemberError("only PNG, JPEG or WebP pictures can be used (this file is {kind})", field="image",
                          kind=declared or "?")
    check_bytes(size, limits)
    return ACCEPTED[declared]


def check_bytes(size: int, limits: UploadSettings) -> None:
    if size > limits.max_bytes:
        raise MemberError("the picture is {size} MB; this bot takes at most {limit} MB", field="image",
                          size=format(size / 1e6, ".1f"), limit=format(limits.max_bytes / 1e6, ".1f"))


def inspect(data: bytes, expected: str, limits: UploadSettings) -> tuple[bytes, int, int]:
    """Check downloaded bytes and decode them safely; returns (PNG bytes, width, height)."""
    check_bytes(len(data), limits)
    actual = sniff(data)
    if actual is None:
        raise MemberError("this file is not a PNG, JPEG or WebP picture, whatever its name or type says",
                          field="image")
    if actual != expected:
        raise MemberError("this file says it is {declared} but it really is {actual}: upload the picture as it is",
                          field="image", declared=expected, actual=actual)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=[actual])  # reads the header only
            width, height = image.size
            if width * height > limits.max_pixels or max(width, height) > limits.max_side:
                raise MemberError("the picture is {width}x{height} pixels; this bot takes at most {pixels} pixels "
                                  "and {side} per side", field="image", width=width, height=height,
                                  pixels=format(limits.max_pixels, ","), side=limits.max_side)
            image.load()
            rgb = image.convert("RGB")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise MemberError("the picture claims more pixels than this bot will decode", field="image") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise MemberError("the picture could not be read ({error})", field="image", error=error) from None
    out = io.BytesIO()
    rgb.save(out, format="PNG", compress_level=1)
    return out.getvalue(), width, height


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
