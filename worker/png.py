"""PNG files with A1111's ``parameters`` text chunk."""

from __future__ import annotations

import io

from PIL import Image
from PIL.PngImagePlugin import PngInfo


def encode_png(image: Image.Image, parameters: str) -> bytes:
    """PNG bytes carrying ``parameters``; the same pixels and text give the same bytes."""
    info = PngInfo()
    info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, optimize=False, compress_level=6)
    return buffer.getvalue()


def read_parameters(data: bytes) -> str | None:
    with Image.open(io.BytesIO(data)) as image:
        text = image.info.get("parameters")
        return str(text) if text is not None else None
