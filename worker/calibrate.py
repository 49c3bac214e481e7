"""Calibrating the image check on a community's own labelled images.

Every check reduces to one number per image compared with one threshold, so one pass of
the classifiers gives the precision, recall and false-withhold rate at any threshold:

* ``opennsfw``: its score against ``safety.opennsfw_threshold``;
* ``tagger:rating``: questionable + explicit against ``safety.tagger_threshold``;
* ``tagger:explicit_tags``: the highest explicit tag's score over its own threshold, against 1
  (a scale: 0.8 means every tag threshold times 0.8);
* ``tagger``: either of the two above, and ``combined``: any classifier, both as that scale;
* ``nsfwjs:<class>``: each watched class's probability against its ``safety.nsfwjs_thresholds`` entry,
  and ``nsfwjs``: the watched classes together, as a scale of their thresholds.

Positives are the ``nsfw`` images: recall is the share of them withheld, precision the share
of withheld images that are nsfw, and the false-withhold rate the share of safe images withheld.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ponybot.errors import ImageRefusal, PonybotError
from ponybot.images import ImageLimits, open_image
from ponybot.policy import Strictness
from ponybot.settings import SafetySettings
from worker.nsfwjs import CLASSES, NsfwJs
from worker.safety import OpenNSFW, SafetyCheck
from worker.tagger import FLAGGED_RATINGS, WdTagger

LABELS = ("safe", "nsfw")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
THRESHOLDS = [round(0.05 * i, 2) for i in range(1, 20)]
SCALES = [round(0.2 * i, 1) for i in range(1, 11)]
BATCH = 16


class BadInputError(PonybotError):
    """An image, folder or label file the tools cannot use; the message says which and why."""


def labelled_images(source: Path) -> list[tuple[Path, str]]:
    """``source/safe`` and ``source/nsfw``, or a CSV of ``path,label`` (also ``source/labels.csv``)."""
    if source.is_dir() and not (source / "labels.csv").is_file():
        found = [(path, label) for label in LABELS if (source / label).is_dir()
                 for path in sorted((source / label).iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]
        if not (source / "safe").is_dir() or not (source / "nsfw").is_dir():
            raise BadInputError(f"{source}: needs safe/ and nsfw/ subfolders of images, or a labels.csv "
                                "(columns path,label)")
        return found
    table = source / "labels.csv" if source.is_dir() else source
    if not table.is_file():
        raise BadInputError(f"{source}: no such folder or CSV file")
    try:
        with table.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as error:
        raise BadInputError(f"{table}: not a readable CSV ({error})") from None
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise BadInputError(f"{table}: needs the columns path and label (safe or nsfw), one image a row")
    bad = [f"line {i + 2}: {row['label']!r}" for i, row in enumerate(rows) if row["label"] not in LABELS]
    if bad:
        raise BadInputError(f"{table}: labels must be safe or nsfw ({'; '.join(bad[:5])})")
    return [(table.parent / row["path"], row["label"]) for row in rows]


def batches(labelled: Sequence[tuple[Path, str]], limits: ImageLimits, kept: list[str],
            refused: Callable[[Path, ImageRefusal], None]) -> Iterator[list[Image.Image]]:
    """The images ``BATCH`` at a time; one that is refused is reported and left out, the label of each
    one kept is appended to ``kept`` (in the order of the values :func:`signals` returns)."""
    batch: list[Image.Image] = []
    for path, label in labelled:
        try:
            batch.append(open_image(path, limits))
        except ImageRefusal as error:
            refused(path, error)
            continue
        kept.append(label)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def signals(check: SafetyCheck, settings: SafetySettings,
            batched: Iterable[list[Image.Image]]) -> dict[str, np.ndarray]:
    """Each check's number per image (see the module's docstring)."""
    found: dict[str, list[float]] = {}
    for images in batched:
        for classifier in check.classifiers:
            if isinstance(classifier, WdTagger):
                scores = classifier.scores(images)
                rows = [classifier.rating_rows[r] for r in FLAGGED_RATINGS[Strictness.STANDARD]]
                rating = scores[:, rows].sum(axis=1)
                explicit = np.zeros(len(images), dtype=np.float64)
                for tag, row in classifier.explicit_rows.items():
                    explicit = np.maximum(explicit, scores[:, row] / classifier.explicit_thresholds[tag])
                found.setdefault("tagger:rating", []).extend(rating.tolist())
                found.setdefault("tagger:explicit_tags", []).extend(explicit.tolist())
            elif isinstance(classifier, NsfwJs):
                probabilities = classifier.scores(images)
                for name in settings.nsfwjs_thresholds:
                    found.setdefault(f"nsfwjs:{name}", []).extend(probabilities[:, CLASSES.index(name)].tolist())
            elif isinstance(classifier, OpenNSFW):
                found.setdefault("opennsfw", []).extend(r.score for r in classifier.classify(images))
    result = {name: np.asarray(values, dtype=np.float64) for name, values in found.items()}
    ratios = []
    if "tagger:rating" in result:
        result["tagger"] = np.maximum(result["tagger:rating"] / settings.tagger_threshold,
                                      result["tagger:explicit_tags"])
        ratios.append(result["tagger"])
    watched = [name for name in settings.nsfwjs_thresholds if f"nsfwjs:{name}" in result]
    if watched:
        result["nsfwjs"] = np.max(np.stack([ratio(result[f"nsfwjs:{name}"], settings.nsfwjs_thresholds[name])
                                            for name in watched]), axis=0)
        ratios.append(result["nsfwjs"])
    if "opennsfw" in result:
        ratios.append(result["opennsfw"] / settings.opennsfw_threshold)
    if ratios:
        result["combined"] = np.max(np.stack(ratios), axis=0)
    return result


def ratio(values: np.ndarray, threshold: float) -> np.ndarray:
    """Values as multiples of their threshold; a threshold of 0 flags everything (an infinite ratio)."""
    return values / threshold if threshold > 0 else np.full_like(values, np.inf)


def configured(name: str, settings: SafetySettings) -> float:
    if name.startswith("nsfwjs:"):
        return settings.nsfwjs_thresholds[name.split(":", 1)[1]]
    return {"opennsfw": settings.opennsfw_threshold, "tagger:rating": settings.tagger_threshold}.get(name, 1.0)


def is_scale(name: str) -> bool:
    return name not in ("opennsfw", "tagger:rating") and not name.startswith("nsfwjs:")


@dataclass(frozen=True)
class Score:
    threshold: float
    precision: float | None
    recall: float | None
    false_withhold: float | None


def score(values: np.ndarray, nsfw: np.ndarray, threshold: float) -> Score:
    withheld = values >= threshold - 1e-9
    true_positives = int(np.sum(withheld & nsfw))
    positives, negatives = int(np.sum(nsfw)), int(np.sum(~nsfw))
    return Score(threshold,
                 true_positives / int(np.sum(withheld)) if np.any(withheld) else None,
                 true_positives / positives if positives else None,
                 int(np.sum(withheld & ~nsfw)) / negatives if negatives else None)


def suggest(values: np.ndarray, nsfw: np.ndarray, recall: float) -> float | None:
    """The highest threshold (the fewest safe images withheld) whose recall on nsfw reaches ``recall``;
    ``math.inf`` where a threshold of 0 in the settings withholds those images at any scale."""
    positives = np.sort(values[nsfw])[::-1]
    if positives.size == 0:
        return None
    needed = max(1, math.ceil(recall * positives.size - 1e-9))
    if not math.isfinite(positives[needed - 1]):
        return math.inf
    threshold = math.floor(float(positives[needed - 1]) * 1000) / 1000
    return threshold if threshold > 0 else None


def table(rows: list[tuple[str, str, Score]]) -> str:
    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [f"{'check':<22} {'threshold':>10} {'precision':>10} {'recall':>8} {'false_withhold':>15}"]
    lines += [f"{name:<22} {shown:>10} {number(s.precision):>10} {number(s.recall):>8} {number(s.false_withhold):>15}"
              for name, shown, s in rows]
    return "\n".join(lines)


def shown(name: str, threshold: float, mark: str = "") -> str:
    return (f"x{threshold:.2f}" if is_scale(name) else f"{threshold:.2f}") + mark
