"""The worker's CPU work after the GPU: PNG encoding and the image classifier, per image.

On a GPU host this runs while the GPU would otherwise wait for the next batch, so it is
part of images per second. Prints: PNG time and size by zlib level on a cartoon-like
512x512 render, a batch of 8 images encoded one after another against side by side
(the worker's thread pool), and each image check's milliseconds per image at batch 1 and 8
(nsfwjs and open_nsfw ship with the worker; the tagger only with ``--tagger FOLDER``, a WD
tagger folder, since none can be downloaded here), on ``--threads`` CPU threads each.
Run: ``.venv/bin/python bench/postprocess.py [--tagger FOLDER] [--threads N]``
"""

from __future__ import annotations

import argparse
import io
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import machine, table  # type: ignore[import-not-found]
from PIL import Image, ImageDraw, ImageFilter

from ponybot.settings import SafetySettings
from worker.nsfwjs import NsfwJs
from worker.png import COMPRESS_LEVEL, encode_png
from worker.safety import ImageClassifier, OpenNSFW, SafetyCheck, load_tagger
from worker.tagger import onnx_providers


def textured(seed: int, size: int = 512) -> Image.Image:
    """Smooth noise (64x64 upsampled): shading and grain, the hard case for zlib."""
    noise = Image.frombytes("RGB", (64, 64), random.Random(seed).randbytes(64 * 64 * 3))
    return noise.resize((size, size), Image.Resampling.BICUBIC)


def render(seed: int, size: int = 512) -> Image.Image:
    """Flat shapes over a gradient, softened: the easy case, like a flat-shaded cartoon."""
    image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    draw = ImageDraw.Draw(image)
    for i in range(24):
        x, y = (seed * 97 + i * 53) % size, (seed * 31 + i * 89) % size
        radius = 20 + (i * 17) % 90
        draw.ellipse((x - radius, y - radius, x + radius, y + radius),
                     fill=((i * 70 + seed) % 256, (i * 40) % 256, (i * 110 + 30) % 256))
    return image.filter(ImageFilter.GaussianBlur(2))


def png(image: Image.Image, level: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=level)
    return buffer.getvalue()


def timed(action, repeat: int = 5) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    for _ in range(repeat):
        action()
    return (time.perf_counter() - started) / repeat


def checks(images: list[Image.Image], tagger: Path | None, threads: int) -> str:
    """Each image check's ms per image at batch 1 and 8, and all of them together as the worker runs them."""
    settings = SafetySettings(tagger=str(tagger) if tagger else "none")
    classifiers: list[ImageClassifier] = []
    if tagger:
        classifiers.append(load_tagger(settings, tagger, download=False, threads=threads))
    classifiers += [NsfwJs(settings, threads), OpenNSFW(settings.opennsfw_threshold, threads=threads)]
    together = SafetyCheck(classifiers)
    rows = []
    for name, classify in [*((c.name, c.classify) for c in classifiers), (f"all ({together.name})",
                                                                         together.classify)]:
        classify(images[:1])  # warm up: onnxruntime allocates at the first run
        cells: list[object] = [name]
        for batch in (1, 8):
            run = lambda batch=batch, classify=classify: classify(images[:batch])  # type: ignore[misc]  # noqa: E731
            cells.append(f"{timed(run, 3) * 1000 / batch:.1f}")
        rows.append(cells)
    return table(f"image checks on 512x512 images, {threads} CPU thread(s) each, on {onnx_providers()[0]}",
                 ["check", "ms/image at batch 1", "ms/image at batch 8"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tagger", type=Path, help="a WD tagger folder (model.onnx, selected_tags.csv) to time too")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per check (the worker gives 2)")
    args = parser.parse_args()
    images = [textured(seed) if seed % 2 else render(seed) for seed in range(8)]
    rows = []
    for level in (1, 3, 6, 9):
        row: list[object] = [level]
        for image in images[:2]:
            row += [f"{timed(lambda image=image, level=level: png(image, level)) * 1000:.1f}",  # type: ignore[misc]
                    f"{len(png(image, level)) / 1024:.0f}"]
        rows.append([*row, "<- ponybot" if level == COMPRESS_LEVEL else ""])
    text = "prompt: pinkie pie\nSteps: 25, Sampler: DDIM, CFG scale: 7.5, Seed: 1, Size: 512x512"
    serial = timed(lambda: [encode_png(image, text) for image in images], repeat=3)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        parallel = timed(lambda: list(pool.map(lambda image: encode_png(image, text), images)), repeat=3)
    print(machine())
    print(table("PNG of one 512x512 image by zlib level",
                ["level", "flat ms", "flat KiB", "textured ms", "textured KiB", ""], rows))
    print(table(f"8 images (4 flat, 4 textured) at level {COMPRESS_LEVEL}: one after another against side by side",
                ["one after another ms", f"side by side ms ({min(8, os.cpu_count() or 1)} threads)", "speed-up"],
                [[f"{serial * 1000:.1f}", f"{parallel * 1000:.1f}", f"{serial / parallel:.2f}x"]]))
    print(checks(images, args.tagger, args.threads))


if __name__ == "__main__":
    main()
