"""nsfwjs's MobileNetV2 (MIT, npm ``nsfwjs``), converted to ONNX and shipped inside this package.

It scores five classes, Drawing, Hentai, Neutral, Porn and Sexy, and was trained on photos and drawn images
alike, so it is the art-aware check that needs no download: SFW channels work on a fresh offline machine.
``tools/nsfwjs/convert.py`` made ``models/nsfwjs_mobilenet_v2.onnx`` from the pinned npm package
(``models/nsfwjs_mobilenet_v2.json`` says which version); ``tests/test_nsfwjs.py`` proves it answers what
the original answers in node.

The preprocessing is nsfwjs's own (``NSFWJS.infer``): the RGB pixels as ``tf.browser.fromPixels`` reads them
(alpha dropped, grey repeated in R, G and B), divided by 255, then, unless already 224x224,
``tf.image.resizeBilinear(..., alignCorners=true)`` to 224x224, aspect ratio not kept.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ponybot.errors import ConfigError
from ponybot.policy import Strictness
from ponybot.settings import SafetySettings
from ponybot.settings.content import NSFWJS_CLASSES
from worker.tagger import Reading, onnx_providers

log = logging.getLogger(__name__)

CLASSES = NSFWJS_CLASSES
SIZE = 224
MODEL = Path(__file__).resolve().parent / "models" / "nsfwjs_mobilenet_v2.onnx"


def pixels(image: Image.Image) -> np.ndarray[Any, Any]:
    """The image as uint8 [H, W, 3] RGB, as tf.browser.fromPixels gives it: alpha dropped, grey repeated."""
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def resize_bilinear(values: np.ndarray[Any, Any], height: int, width: int) -> np.ndarray[Any, Any]:
    """TF.js's CPU ``resizeBilinear`` with ``alignCorners=true`` (no half-pixel centres) on float32 [H, W, C].

    Computed as TF.js computes it, in float64 from the float32 inputs, rounded once to float32.
    """
    old_height, old_width = values.shape[:2]

    def axis(new: int, old: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        ratio = (old - 1) / (new - 1) if new > 1 else old / new
        source = ratio * np.arange(new, dtype=np.float64)
        floor = np.maximum(0, np.floor(source)).astype(np.int64)
        return floor, np.minimum(old - 1, np.ceil(source)).astype(np.int64), source - floor

    row_floor, row_ceil, row_frac = axis(height, old_height)
    col_floor, col_ceil, col_frac = axis(width, old_width)
    data = values.astype(np.float64)
    top, bottom = data[row_floor], data[row_ceil]
    col_frac, row_frac = col_frac[None, :, None], row_frac[:, None, None]
    top_row = top[:, col_floor] + (top[:, col_ceil] - top[:, col_floor]) * col_frac
    bottom_row = bottom[:, col_floor] + (bottom[:, col_ceil] - bottom[:, col_floor]) * col_frac
    resized: np.ndarray[Any, Any] = (top_row + (bottom_row - top_row) * row_frac).astype(np.float32)
    return resized


def prepare(image: Image.Image) -> np.ndarray[Any, Any]:
    """The float32 [224, 224, 3] tensor nsfwjs feeds its model for this image."""
    scaled = pixels(image).astype(np.float32) / np.float32(255)
    if scaled.shape[:2] != (SIZE, SIZE):
        scaled = resize_bilinear(scaled, SIZE, SIZE)
    return scaled


def model_version() -> str:
    """The npm version the shipped model was converted from (its JSON beside it)."""
    return str(json.loads(MODEL.with_suffix(".json").read_text(encoding="utf-8"))["nsfwjs"])


class NsfwJs:
    """The five class probabilities against the per-class thresholds of ``safety.nsfwjs_thresholds``."""

    name = "nsfwjs"

    def __init__(self, settings: SafetySettings, threads: int = 2, model: Path = MODEL) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(model), options, providers=onnx_providers())
        except Exception as error:  # onnxruntime raises its own types for a missing or corrupt file
            raise ConfigError(f"safety.nsfwjs: {model} could not be loaded: {error}") from error
        self.input = self.session.get_inputs()[0].name
        self.thresholds = dict(settings.nsfwjs_thresholds)
        self.strict_factor = settings.strict_factor
        log.info("nsfwjs image check loaded (%s, %s)", model.name, self.session.get_providers()[0])

    def scores(self, images: Sequence[Image.Image]) -> np.ndarray[Any, Any]:
        """[N, 5] probabilities in CLASSES order, the batch in one run."""
        return self.run(np.stack([prepare(image) for image in images]))

    def run(self, batch: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        (probabilities,) = self.session.run(None, {self.input: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.asarray(probabilities, dtype=np.float32)

    def classify(self, images: Sequence[Image.Image], strictness: Strictness = Strictness.STANDARD) -> list[Reading]:
        factor = self.strict_factor if strictness is Strictness.STRICT else 1.0
        thresholds = {name: limit * factor for name, limit in self.thresholds.items()}
        readings = []
        for row in self.scores(images):
            classes = {name: float(row[index]) for index, name in enumerate(CLASSES)}
            readings.append(reading(self.name, classes, thresholds))
        return readings


def reading(name: str, classes: dict[str, float], thresholds: dict[str, float]) -> Reading:
    """Flagged when any watched class reaches its threshold; the score is the watched class closest to (or
    furthest over) its threshold, so ``score >= threshold`` says the same as ``flagged``."""
    if not thresholds:
        return Reading(name, False, 0.0, 1.0, classes=classes)
    worst = max(thresholds, key=lambda watched: classes[watched] - thresholds[watched])
    flagged = any(classes[watched] >= limit for watched, limit in thresholds.items())
    return Reading(name, flagged, classes[worst], thresholds[worst], classes=classes, watched=worst)
