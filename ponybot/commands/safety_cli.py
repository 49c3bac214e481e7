"""``ponybot safety``: see what the image check says, calibrate it on your own images, fetch the tagger.

* ``check IMAGE...``: JSON per image (each classifier's reading: the tagger's rating and explicit tags
  found, nsfwjs's five class probabilities, open_nsfw's score; the combined SFW decision); exit 1 when
  any image would be withheld in an SFW channel.
* ``eval FOLDER``: precision, recall and false-withhold rate per check on labelled images, at the
  configured thresholds and over a sweep; ``--suggest`` prints thresholds reaching a recall target.
* ``fetch``: put the configured tagger into ``model.cache_dir`` now (what the worker does at start).

Both open images as the bot opens a member's upload (:func:`ponybot.images.open_image`, the
``uploads`` limits): a file it refuses is one line on stderr naming it and why, the others are
reported as usual, and the exit status is 2 (bad input, before 1: the report is incomplete).

The worker side (onnxruntime, numpy) and Pillow are imported only when a subcommand runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from ponybot.errors import ImageRefusal
from ponybot.policy import Strictness
from ponybot.settings import Settings

EXIT_WITHHELD = 1
EXIT_BAD_INPUT = 2


def add_parser(commands: Any) -> None:
    safety = commands.add_parser("safety", help="the image check: try it on images, calibrate it, fetch the tagger")
    actions = safety.add_subparsers(dest="safety_command", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="what the image check says about images (JSON; exit 1 if withheld)")
    check.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                       help="image files, or folders (their images, sorted by name)")
    check.add_argument("--strictness", choices=[s.value for s in Strictness], default=Strictness.STANDARD.value,
                       help="as in a channel with /policy set strictness")
    evaluate = actions.add_parser("eval", help="precision/recall of each check on labelled images")
    evaluate.add_argument("folder", type=Path, metavar="FOLDER",
                          help="safe/ and nsfw/ subfolders, or a CSV of path,label (or FOLDER/labels.csv)")
    evaluate.add_argument("--suggest", action="store_true", help="print thresholds that reach --recall on nsfw")
    evaluate.add_argument("--recall", type=float, default=0.99, help="recall target on nsfw images (default 0.99)")
    actions.add_parser("fetch", help="fetch safety.tagger into model.cache_dir now (the worker does at start)")


def say(text: str) -> None:
    sys.stdout.write(text + "\n")


def cmd_safety(args: argparse.Namespace, settings: Settings) -> int:
    from worker.calibrate import BadInputError

    try:
        if args.safety_command == "fetch":
            return fetch(settings)
        if args.safety_command == "check":
            return check(args.images, Strictness(args.strictness), settings)
        return evaluate(args.folder, settings, suggest=args.suggest, recall=args.recall)
    except BadInputError as error:
        sys.stderr.write(f"ponybot: {error}\n")
        return EXIT_BAD_INPUT


def fetch(settings: Settings) -> int:
    from worker.safety import load_tagger

    if not settings.safety.tagger_enabled:
        say("safety.tagger is none: nothing to fetch")
        return 0
    tagger = load_tagger(settings.safety, settings.model.cache_dir)
    say(f"tagger ready: {settings.safety.tagger} ({len(tagger.names)} tags)")
    return 0


def refused(path: Path, error: ImageRefusal) -> None:
    """One line for an image that cannot be used: the file, why, and the setting behind a limit."""
    setting = f" ({error.setting})" if error.setting else ""
    sys.stderr.write(f"ponybot: {path}: {error}{setting}\n")


def check(paths: list[Path], strictness: Strictness, settings: Settings) -> int:
    from ponybot.images import ImageLimits, open_image
    from worker.calibrate import IMAGE_SUFFIXES
    from worker.safety import load_safety

    paths = [found for path in paths for found in (
        sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path])]
    limits, opened = ImageLimits.of(settings.uploads), []
    for path in paths:  # every image read before the models load
        try:
            opened.append((path, open_image(path, limits)))
        except ImageRefusal as error:
            refused(path, error)
    if not opened:
        return EXIT_BAD_INPUT
    safety = load_safety(settings.safety, settings.model.cache_dir, fail_fast=True)
    results = []
    verdicts = safety.classify([image for _path, image in opened], strictness)
    for (path, _image), verdict in zip(opened, verdicts, strict=True):
        tagger = next((r for r in verdict.readings if r.rating is not None), None)
        results.append({
            "image": str(path),
            "sfw_decision": "post" if verdict.flagged is False else "withhold",
            "flagged": verdict.flagged,
            "strictness": strictness.value,
            "rating": tagger.rating if tagger else None,
            "explicit_tags": tagger.as_json()["explicit_tags"] if tagger else {},
            "classifiers": {reading.classifier: reading.as_json() for reading in verdict.readings},
        })
    say(json.dumps(results, indent=2))
    if len(opened) < len(paths):
        return EXIT_BAD_INPUT
    return EXIT_WITHHELD if any(result["flagged"] is not False for result in results) else 0


def evaluate(folder: Path, settings: Settings, *, suggest: bool, recall: float) -> int:
    import numpy as np

    from ponybot.images import ImageLimits
    from worker import calibrate
    from worker.safety import load_safety

    if not 0 < recall <= 1:
        raise calibrate.BadInputError(f"--recall must be above 0 and at most 1, not {recall}")
    labelled = calibrate.labelled_images(folder)
    if not labelled:
        raise calibrate.BadInputError(f"{folder}: no images found")
    safety = load_safety(settings.safety, settings.model.cache_dir, fail_fast=True)
    kept: list[str] = []
    batched = calibrate.batches(labelled, ImageLimits.of(settings.uploads), kept, refused)
    values = calibrate.signals(safety, settings.safety, batched)
    if not kept:
        raise calibrate.BadInputError(f"{folder}: none of its {len(labelled)} images could be used")
    counts = {label: kept.count(label) for label in calibrate.LABELS}
    nsfw = np.array([label == "nsfw" for label in kept])
    say(f"{len(kept)} images: {counts['safe']} safe, {counts['nsfw']} nsfw (nsfw is the positive class)")
    say("\nAt the configured thresholds:")
    say(calibrate.table([(name, calibrate.shown(name, calibrate.configured(name, settings.safety)),
                          calibrate.score(v, nsfw, calibrate.configured(name, settings.safety)))
                         for name, v in values.items()]))
    say("\nSweep (* = configured; x = every threshold of that check times this):")
    rows = []
    for name, v in values.items():
        current = calibrate.configured(name, settings.safety)
        grid = sorted(set(calibrate.SCALES if calibrate.is_scale(name) else calibrate.THRESHOLDS) | {current})
        rows += [(name, calibrate.shown(name, t, "*" if t == current else ""), calibrate.score(v, nsfw, t))
                 for t in grid]
    say(calibrate.table(rows))
    if suggest:
        say(f"\nSuggested for recall >= {recall:g} on nsfw:")
        for name, v in values.items():
            found = calibrate.suggest(v, nsfw, recall)
            if found is None:
                say(f"  {name}: no threshold above 0 reaches it")
                continue
            if math.isinf(found):
                say(f"  {name}: any scale (a threshold of 0 in safety.nsfwjs_thresholds withholds every image)")
                continue
            result = calibrate.score(v, nsfw, found)
            say(f"  {name}: {describe_suggestion(name, found, settings)} (recall {result.recall:.3f}, "
                f"false withhold {result.false_withhold if result.false_withhold is not None else 0:.3f})")
    return EXIT_BAD_INPUT if len(kept) < len(labelled) else 0


def floor3(value: float) -> str:
    """Rounded down: a suggested threshold printed higher than found would miss the image that set it."""
    return f"{math.floor(value * 1000 + 1e-9) / 1000:.3f}"


def describe_suggestion(name: str, found: float, settings: Settings) -> str:
    safety = settings.safety
    if name == "opennsfw":
        return f"opennsfw_threshold = {found:.3f}"
    if name == "tagger:rating":
        return f"tagger_threshold = {found:.3f}"
    if name.startswith("nsfwjs:"):
        return f"nsfwjs_thresholds.{name.split(':', 1)[1]} = {found:.3f}"
    scaled = f"every threshold x{found:.3f}"
    settings_scaled = []
    if name in ("tagger", "combined") and safety.tagger_enabled:
        settings_scaled.append(f"tagger_threshold = {floor3(safety.tagger_threshold * found)}")
    if name in ("nsfwjs", "combined") and safety.nsfwjs:
        classes = ", ".join(f"{watched} = {floor3(limit * found)}"
                            for watched, limit in safety.nsfwjs_thresholds.items())
        settings_scaled.append(f"nsfwjs_thresholds = {{ {classes} }}")
    if name == "combined" and safety.opennsfw:
        settings_scaled.append(f"opennsfw_threshold = {floor3(safety.opennsfw_threshold * found)}")
    return scaled + (": " + ", ".join(settings_scaled) if settings_scaled else "")
