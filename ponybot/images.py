"""The one way ponybot opens a picture someone else made: a member's upload, an image read back from
Redis, a file given to ``ponybot safety``, a result the gallery keeps.

Refusals, in order, each an :class:`~ponybot.errors.ImageRefusal` with a stable ``reason``:

* ``missing`` / ``unreadable``: a path that is not there or cannot be read;
* ``too_large``: more bytes than allowed (a file's size is read before its bytes are);
* ``not_image``: not a PNG, JPEG or WebP picture by its magic bytes, whatever its name says
  (an empty file, a text file named ``.png``, a GIF);
* ``too_many_pixels``: the size in the file's header is over the limit. The header is parsed by
  the format's own reader without decoding anything, so a decompression bomb never reaches the
  decoder (nor Pillow's ``DecompressionBombError``, which would not say how large it claims to be);
* ``corrupt``: the header or the pixel data is broken (a truncated file).

What comes back is decoded: the first frame of an animated PNG or WebP, turned by its EXIF
orientation once (the tag is then gone), in RGB, or RGBA when ``alpha`` is asked for and it has any.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from PIL import Image, ImageFile, ImageOps, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from ponybot.errors import N_, ImageRefusal
from ponybot.settings import UploadSettings

#: Format -> its header reader. Only formats a member may upload: the bot never posts any other.
READERS: dict[str, Callable[[IO[bytes]], ImageFile.ImageFile]] = {
    "PNG": PngImagePlugin.PngImageFile,
    "JPEG": JpegImagePlugin.JpegImageFile,
    "WEBP": WebPImagePlugin.WebPImageFile,
}
#: What a broken header or broken pixel data raises inside Pillow.
BROKEN = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error, Image.DecompressionBombError)


@dataclass(frozen=True)
class ImageLimits:
    """How large a picture may be; ``max_bytes`` None for bytes already in memory (re-encoded, larger)."""

    max_pixels: int
    max_side: int
    max_bytes: int | None = None

    @classmethod
    def of(cls, uploads: UploadSettings, *, count_bytes: bool = True) -> ImageLimits:
        return cls(uploads.max_pixels, uploads.max_side, uploads.max_bytes if count_bytes else None)


def sniff(data: bytes) -> str | None:
    """The format the bytes really are (from their magic numbers), or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def open_image(source: bytes | Path, limits: ImageLimits, *, alpha: bool = False) -> Image.Image:
    """The picture, decoded and normalised, or :class:`ImageRefusal` saying why not (see the module)."""
    data = read_bytes(source, limits) if isinstance(source, Path) else source
    check_bytes(len(data), limits)
    found = sniff(data)
    if found is None:
        raise ImageRefusal("not_image", N_("this file is not a PNG, JPEG or WebP picture, whatever its name or type "
                                           "says"))
    try:
        image = READERS[found](io.BytesIO(data))  # the header only: nothing decoded yet
    except BROKEN as error:
        raise corrupt(error) from None
    width, height = image.size
    if width * height > limits.max_pixels or max(width, height) > limits.max_side:
        image.close()
        raise ImageRefusal("too_many_pixels", N_("the picture is {width}x{height} pixels; this bot takes at most "
                                                 "{pixels} pixels and {side} per side"),
                           setting="uploads.max_pixels, uploads.max_side", width=width, height=height,
                           pixels=format(limits.max_pixels, ","), side=limits.max_side)
    try:
        with image:
            image.seek(0)  # the first frame of an animation
            image.load()
            upright = ImageOps.exif_transpose(image)
            has_alpha = "A" in upright.getbands() or "transparency" in upright.info
            return upright.convert("RGBA" if alpha and has_alpha else "RGB")
    except BROKEN as error:
        raise corrupt(error) from None


def read_bytes(path: Path, limits: ImageLimits) -> bytes:
    try:
        check_bytes(path.stat().st_size, limits)  # before a byte is read
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageRefusal("missing", N_("no such file")) from None
    except OSError as error:
        raise ImageRefusal("unreadable", N_("the file cannot be read ({error})"), error=error.strerror or error) \
            from None


def check_bytes(size: int, limits: ImageLimits) -> None:
    if limits.max_bytes is not None and size > limits.max_bytes:
        raise ImageRefusal("too_large", N_("the picture is {size} MB; this bot takes at most {limit} MB"),
                           setting="uploads.max_bytes", size=format(size / 1e6, ".1f"),
                           limit=format(limits.max_bytes / 1e6, ".1f"))


def corrupt(error: BaseException) -> ImageRefusal:
    return ImageRefusal("corrupt", N_("the picture could not be read ({error})"), error=error)
