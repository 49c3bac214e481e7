"""The canvas of a Zoom Out or a Pan: how far it reaches past the image on each side (the bot asks, the worker
draws). Sides stay multiples of 64 (the model's step); the worker shrinks a canvas over
``limits.max_upscale_pixels`` to fit, at the same aspect, so the original comes out smaller inside it."""

from __future__ import annotations

from typing import Literal

from ponybot.schemas import SIDE_STEP, Margins

ZOOM_FACTORS = ("1.5", "2")
PAN_DIRECTIONS = ("left", "right", "up", "down")
Direction = Literal["left", "right", "up", "down"]


def _grown(side: int, factor: float) -> int:
    """``side`` times ``factor``, to the nearest multiple of 64, at least one step more."""
    return max(side + SIDE_STEP, round(side * factor / SIDE_STEP) * SIDE_STEP)


def zoom_margins(width: int, height: int, factor: float) -> Margins:
    """The image in the middle of a canvas ``factor`` times its size."""
    extra_w, extra_h = _grown(width, factor) - width, _grown(height, factor) - height
    return Margins(left=extra_w // 2, right=extra_w - extra_w // 2, top=extra_h // 2, bottom=extra_h - extra_h // 2)


def pan_margins(width: int, height: int, direction: Direction) -> Margins:
    """The canvas grown by half the image's side towards ``direction``."""
    side = width if direction in ("left", "right") else height
    extra = _grown(side, 1.5) - side
    return Margins(**{{"left": "left", "right": "right", "up": "top", "down": "bottom"}[direction]: extra})
