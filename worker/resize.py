"""Fitting an uploaded picture to the requested size, the way A1111's img2img does (``images.resize_image``)."""

from __future__ import annotations

from PIL import Image

from ponybot.schemas import ResizeMode

LANCZOS = Image.Resampling.LANCZOS


def resize_image(image: Image.Image, width: int, height: int, mode: ResizeMode) -> Image.Image:
    """``image`` as RGB at ``width`` x ``height``: stretched, cropped to cover, or fitted with filled bars."""
    image = image.convert("RGB")
    if mode is ResizeMode.JUST_RESIZE:
        return image.resize((width, height), LANCZOS)
    ratio, source_ratio = width / height, image.width / image.height
    if mode is ResizeMode.CROP:
        cover_w = width if ratio > source_ratio else image.width * height // image.height
        cover_h = height if ratio <= source_ratio else image.height * width // image.width
        resized = image.resize((cover_w, cover_h), LANCZOS)
        result = Image.new("RGB", (width, height))
        result.paste(resized, box=(width // 2 - cover_w // 2, height // 2 - cover_h // 2))
        return result
    fit_w = width if ratio < source_ratio else image.width * height // image.height
    fit_h = height if ratio >= source_ratio else image.height * width // image.width
    resized = image.resize((fit_w, fit_h), LANCZOS)
    result = Image.new("RGB", (width, height))
    result.paste(resized, box=(width // 2 - fit_w // 2, height // 2 - fit_h // 2))
    if ratio < source_ratio:  # bars above and below: the top and bottom rows stretched
        bar = height // 2 - fit_h // 2
        if bar > 0:
            result.paste(resized.resize((width, bar), box=(0, 0, width, 0)), box=(0, 0))
            result.paste(resized.resize((width, bar), box=(0, resized.height, width, resized.height)),
                         box=(0, bar + fit_h))
    elif ratio > source_ratio:  # bars left and right: the first and last columns stretched
        bar = width // 2 - fit_w // 2
        if bar > 0:
            result.paste(resized.resize((bar, height), box=(0, 0, 0, height)), box=(0, 0))
            result.paste(resized.resize((bar, height), box=(resized.width, 0, resized.width, height)),
                         box=(bar + fit_w, 0))
    return result
