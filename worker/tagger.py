"""A booru rating tagger in the WD v3 layout: where it comes from, and what it reads in an image.

The layout (SmilingWolf's WD taggers, Apache-2.0): ``model.onnx`` takes NHWC images,
BGR, 0-255, padded to a white square; it answers one probability per row of
``selected_tags.csv``, whose rows include the four ratings (``general``,
``sensitive``, ``questionable``, ``explicit``, category 9) and general tags
(category 0). It was trained on drawn art, which open_nsfw (photographs) is blind to.

A hub id is fetched on the worker's first start into ``model.cache_dir``, like the
model itself, and read offline from there afterwards.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ponybot.errors import ConfigError
from ponybot.policy import Strictness
from ponybot.settings import SafetySettings

log = logging.getLogger(__name__)

RATINGS = ("general", "sensitive", "questionable", "explicit")
#: The ratings that flag an image; ``strict`` adds ``sensitive``.
FLAGGED_RATINGS = {Strictness.STANDARD: ("questionable", "explicit"),
                   Strictness.STRICT: ("sensitive", "questionable", "explicit")}
#: What a WD tagger folder holds (all that is fetched from the hub).
TAGGER_FILES = ["model.onnx", "selected_tags.csv"]
RATING_CATEGORY, GENERAL_CATEGORY, CHARACTER_CATEGORY = "9", "0", "4"


class TaggerUnavailable(ConfigError):
    """The tagger is not here and cannot be fetched: the worker goes on, failing closed in SFW channels."""


@dataclass(frozen=True)
class Reading:
    """One classifier's reading of one image."""

    classifier: str
    flagged: bool
    score: float  #: the number compared with ``threshold`` (open_nsfw: its score; tagger: the flagged ratings' sum)
    threshold: float
    rating: str | None = None  #: the tagger's most likely rating
    ratings: dict[str, float] = field(default_factory=dict)
    explicit: dict[str, float] = field(default_factory=dict)  #: explicit tags at or above their thresholds
    tags: dict[str, float] = field(default_factory=dict)  #: the top tags read, best first
    classes: dict[str, float] = field(default_factory=dict)  #: nsfwjs: each class's probability
    watched: str | None = None  #: nsfwjs: the watched class that ``score`` and ``threshold`` are of

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"flagged": self.flagged, "score": round(self.score, 4),
                                "threshold": round(self.threshold, 4)}
        if self.rating is not None:
            data.update(rating=self.rating, ratings=_rounded(self.ratings), explicit_tags=_rounded(self.explicit),
                        tags=_rounded(self.tags))
        if self.classes:
            data.update(classes=_rounded(self.classes), top_class=max(self.classes, key=self.classes.__getitem__),
                        watched_class=self.watched)
        return data


def _rounded(scores: dict[str, float]) -> dict[str, float]:
    return {name: round(score, 4) for name, score in scores.items()}


def resolve_tagger(source: str, cache_dir: Path, *, download: bool = True) -> Path:
    """The tagger's folder: a local folder, else the hub id from the cache, else fetched into the cache."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ConfigError(f"safety.tagger: {source} is no folder here and no hub id of the form owner/name")
    from huggingface_hub import snapshot_download

    options: dict[str, Any] = {"repo_id": source, "cache_dir": str(cache_dir), "allow_patterns": TAGGER_FILES}
    try:
        return Path(snapshot_download(local_files_only=True, **options))
    except Exception as error:  # the hub raises many types: not in the cache, whichever it is
        if not download:
            raise TaggerUnavailable(f"safety.tagger: {source} is not in the cache {cache_dir}") from error
    try:
        log.info("fetching the image tagger %s into %s", source, cache_dir)
        return Path(snapshot_download(**options))
    except Exception as error:  # offline, unknown repo, disk full: the operator needs one message
        raise TaggerUnavailable(f"safety.tagger: {source} is not in the cache {cache_dir} and could not be "
                                f"fetched ({type(error).__name__}: {error})") from error


def onnx_providers() -> list[str]:
    """onnxruntime's CUDA provider when installed (onnxruntime-gpu), else the CPU."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if "CUDAExecutionProvider" in available else [
        "CPUExecutionProvider"]


class WdTagger:
    """The rating head and the explicit general tags of a WD v3 tagger, against the settings' thresholds."""

    name = "tagger"

    def __init__(self, folder: Path, settings: SafetySettings, threads: int = 2) -> None:
        import onnxruntime

        model, tags = folder / "model.onnx", folder / "selected_tags.csv"
        if not model.is_file() or not tags.is_file():
            raise ConfigError(f"safety.tagger: {folder} is not a WD tagger (it needs model.onnx and "
                              "selected_tags.csv)")
        self.names, categories = read_tags(tags)
        rows = {name: index for index, name in enumerate(self.names)}
        missing = [rating for rating in RATINGS if categories.get(rating) != RATING_CATEGORY]
        if missing:
            raise ConfigError(f"safety.tagger: {tags} has no rating rows for {', '.join(missing)} (a WD tagger "
                              "lists general, sensitive, questionable and explicit with category 9)")
        self.rating_rows = {rating: rows[rating] for rating in RATINGS}
        self.explicit_rows = {tag: rows[tag] for tag in settings.explicit_tags if tag in rows}
        self.explicit_thresholds = dict(settings.explicit_tags)
        self.tag_rows = np.array([i for i, n in enumerate(self.names)
                                  if categories[n] in (GENERAL_CATEGORY, CHARACTER_CATEGORY)], dtype=np.int64)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(model), options, providers=onnx_providers())
        except Exception as error:  # onnxruntime raises its own types for a corrupt file
            raise ConfigError(f"safety.tagger: {model} could not be loaded: {error}") from error
        self.input = self.session.get_inputs()[0]
        shape, outputs = self.input.shape, self.session.get_outputs()[0].shape
        if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int) or (
                isinstance(outputs[-1], int) and outputs[-1] != len(self.names)):
            raise ConfigError(f"safety.tagger: {model} is not in the WD layout (input {shape}, output {outputs}; "
                              f"expected (N, size, size, 3) and (N, {len(self.names)}))")
        self.size = int(shape[1])
        self.threshold = settings.tagger_threshold
        self.strict_factor = settings.strict_factor
        self.kept, self.min_score = settings.tags_kept, settings.tag_min_score
        log.info("image tagger %s loaded (%d tags, %d explicit tags watched, %s)", folder, len(self.names),
                 len(self.explicit_rows), self.session.get_providers()[0])

    def prepare(self, image: Image.Image) -> np.ndarray[Any, Any]:
        """Pad to a white square, resize, RGB -> BGR, float 0-255 (the WD convention)."""
        image = image.convert("RGB")
        side = max(image.size)
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        array = np.asarray(canvas.resize((self.size, self.size), Image.Resampling.BICUBIC), dtype=np.float32)
        return array[:, :, ::-1]

    def scores(self, images: Sequence[Image.Image]) -> np.ndarray[Any, Any]:
        batch = np.ascontiguousarray(np.stack([self.prepare(image) for image in images]))
        (scores,) = self.session.run(None, {self.input.name: batch})
        return np.asarray(scores, dtype=np.float32)

    def classify(self, images: Sequence[Image.Image], strictness: Strictness = Strictness.STANDARD) -> list[Reading]:
        factor = self.strict_factor if strictness is Strictness.STRICT else 1.0
        threshold = self.threshold * factor
        readings = []
        for row in self.scores(images):
            ratings = {rating: float(row[index]) for rating, index in self.rating_rows.items()}
            score = sum(ratings[rating] for rating in FLAGGED_RATINGS[strictness])
            explicit = {tag: float(row[index]) for tag, index in self.explicit_rows.items()
                        if row[index] >= self.explicit_thresholds[tag] * factor}
            top = self.tag_rows[np.argsort(-row[self.tag_rows], kind="stable")[: self.kept]]
            tags = {self.names[i]: float(row[i]) for i in top if row[i] >= self.min_score}
            readings.append(Reading(self.name, score >= threshold or bool(explicit), score, threshold,
                                    max(ratings, key=ratings.__getitem__), ratings, explicit, tags))
        return readings


def read_tags(path: Path) -> tuple[list[str], dict[str, str]]:
    """The tag names in row order and each one's category; ConfigError when it is no tag list."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as error:
        raise ConfigError(f"safety.tagger: {path} is not a readable CSV ({error})") from error
    if not rows or "name" not in rows[0] or "category" not in rows[0]:
        raise ConfigError(f"safety.tagger: {path} has no name and category columns")
    return [row["name"] for row in rows], {row["name"]: (row["category"] or "").strip() for row in rows}
