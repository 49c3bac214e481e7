"""Inpainting and outpainting as A1111 prepares them (its ``processing.py`` and ``masking.py``), written anew.

The model only ever sees a picture at the job's size and a mask over it; what happens around
that is here: the mask made binary and blurred, "Only masked" cropping the mask's box plus
padding (widened to the job's aspect) and drawing it at the job's size, the masked area filled
("fill") before denoising, and the result pasted back over the original through the blurred mask,
so the unmasked pixels are the original's exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from ponybot.schemas import InpaintArea, InpaintSpec, Margins, MaskedContent, ResizeMode
from worker.resize import resize_image

#: A region of a picture: (left, top, right, bottom), right and bottom exclusive.
Region = tuple[int, int, int, int]


def binary_mask(mask: Image.Image) -> Image.Image:
    """White (above half grey) redraws, everything else is kept: A1111's ``create_binary_mask``."""
    return mask.convert("L").point(lambda value: 255 if value > 128 else 0)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """OpenCV's Gaussian kernel for ``sigma`` at the size A1111 asks for: ``2 * int(2.5 * sigma + 0.5) + 1``."""
    radius = int(2.5 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(offsets**2) / (2 * sigma * sigma))
    normalised: np.ndarray = kernel / kernel.sum()
    return normalised


def blur_mask(mask: Image.Image, blur: int) -> Image.Image:
    """A1111's mask blur: a Gaussian of ``blur`` pixels across, then down (OpenCV's reflected borders)."""
    if blur <= 0:
        return mask
    kernel = gaussian_kernel(blur)
    radius = len(kernel) // 2
    pixels = np.asarray(mask, dtype=np.float64)
    for axis in (1, 0):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(pixels, pad, mode="reflect") if pixels.shape[axis] > radius else np.pad(
            pixels, pad, mode="edge")
        pixels = np.apply_along_axis(lambda line: np.convolve(line, kernel, mode="valid"), axis, padded)
        pixels = np.clip(np.rint(pixels), 0, 255)  # OpenCV rounds to uint8 after each pass
    return Image.fromarray(pixels.astype(np.uint8), mode="L")


def crop_region(mask: Image.Image, padding: int) -> Region | None:
    """The box holding every non-black pixel of ``mask``, grown by ``padding`` within the picture (None: empty)."""
    box = mask.getbbox()
    if box is None:
        return None
    left, top, right, bottom = box
    return (max(left - padding, 0), max(top - padding, 0), min(right + padding, mask.width),
            min(bottom + padding, mask.height))


def _widen(low: int, high: int, wanted: float, limit: int) -> tuple[int, int]:
    """``low..high`` grown evenly by ``wanted - (high - low)``, slid back inside ``0..limit``."""
    grow = int(wanted - (high - low))
    low, high = low - grow // 2, high + grow - grow // 2
    if high >= limit:
        low, high = low - (high - limit), limit
    if low < 0:
        low, high = 0, high - low
    return low, min(high, limit)


def expand_region(region: Region, width: int, height: int, image_size: tuple[int, int]) -> Region:
    """``region`` widened to the aspect ``width``/``height`` it is drawn at, inside the picture (A1111's rule)."""
    left, top, right, bottom = region
    if (right - left) / (bottom - top) > width / height:
        top, bottom = _widen(top, bottom, (right - left) * height / width, image_size[1])
    else:
        left, right = _widen(left, right, (bottom - top) * width / height, image_size[0])
    return left, top, right, bottom


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The masked area painted with the unmasked colours blurred ever finer (A1111's "fill")."""
    result = Image.new("RGBA", image.size)
    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            result.alpha_composite(blurred)
    return result.convert("RGB")


@dataclass(frozen=True)
class Prepared:
    """What the model draws from, and how its picture goes back over the original."""

    image: Image.Image  #: at the job's size
    mask: Image.Image  #: at the job's size, L, white = redraw (blurred)
    overlay: Image.Image  #: the original, RGBA, transparent where it is redrawn
    paste_to: Region | None = None  #: "Only masked": where the drawn picture goes back

    def finish(self, drawn: Image.Image) -> Image.Image:
        """The drawn picture back over the original (A1111's ``apply_overlay``)."""
        base = drawn.convert("RGBA")
        if self.paste_to is not None:
            left, top, right, bottom = self.paste_to
            base = Image.new("RGBA", self.overlay.size)
            base.paste(drawn.convert("RGBA").resize((right - left, bottom - top), Image.Resampling.LANCZOS),
                       (left, top))
        base.alpha_composite(self.overlay)
        return base.convert("RGB")


def prepare(image: Image.Image, mask: Image.Image, width: int, height: int, spec: InpaintSpec,
            resize_mode: ResizeMode = ResizeMode.JUST_RESIZE) -> Prepared | None:
    """``image`` and ``mask`` ready for a ``width`` x ``height`` inpaint as ``spec`` says (None: the mask is empty).

    "Whole picture" fits both to the size (``resize_mode``); "Only masked" keeps the picture's own
    size and draws only the mask's box. The overlay keeps the original wherever the mask is black.
    """
    mask = blur_mask(binary_mask(mask), spec.mask_blur)
    if mask.getbbox() is None:
        return None
    paste_to = None
    if spec.area is InpaintArea.ONLY_MASKED:
        image = image.convert("RGB")
        mask = mask.resize(image.size, Image.Resampling.LANCZOS) if mask.size != image.size else mask
        overlay_mask = mask
        region = crop_region(mask, spec.padding)
        assert region is not None
        paste_to = expand_region(region, width, height, image.size)
        drawn_image = resize_image(image.crop(paste_to), width, height, ResizeMode.FILL)
        drawn_mask = resize_image(mask.crop(paste_to), width, height, ResizeMode.FILL).convert("L")
        full = image
    else:
        full = resize_image(image, width, height, resize_mode)
        drawn_mask = resize_image(mask, width, height, resize_mode).convert("L")
        # A1111 keeps more of the original in the overlay than it redraws: the blurred mask doubled
        overlay_mask = drawn_mask.point(lambda value: min(255, value * 2))
        drawn_image = full
    overlay = Image.new("RGBa", full.size)
    overlay.paste(full.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(overlay_mask))
    if spec.content is MaskedContent.FILL:
        drawn_image = fill(drawn_image, drawn_mask)
    return Prepared(drawn_image, drawn_mask, overlay.convert("RGBA"), paste_to)


def canvas(source: Image.Image, margins: Margins) -> tuple[Image.Image, Image.Image]:
    """The outpaint canvas: ``source`` placed inside its margins, and the mask of the new area (white)."""
    width = source.width + margins.left + margins.right
    height = source.height + margins.top + margins.bottom
    picture = Image.new("RGB", (width, height))
    picture.paste(source.convert("RGB"), (margins.left, margins.top))
    mask = Image.new("L", (width, height), 255)
    mask.paste(0, (margins.left, margins.top, margins.left + source.width, margins.top + source.height))
    return picture, mask
