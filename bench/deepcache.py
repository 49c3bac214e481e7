"""speed fast (DeepCache) against normal: time per image and how far the pixels move.

The tiny model on this machine's CPU (random weights: its pictures are noise-like, so the pixel
difference says how much the approximation moves an image, not how it looks on the real model),
and SD1.5's architecture with random weights for the speed-up alone (``--sd15``, slow on a CPU).
Same prompts, seeds and sampler for both speeds; alternating, best of ``--rounds``.
Run: ``.venv/bin/python bench/deepcache.py``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import machine, table  # type: ignore[import-not-found]

from ponybot.schemas import GenerationRequest, Speed
from ponybot.settings import ModelSettings
from worker.generate import BatchItem, Generator
from worker.loading import LoadedModel, load_model, resolve_device


def measure(generator: Generator, size: int, steps: int, seeds: int, rounds: int) -> list[object]:
    requests = {speed: GenerationRequest(prompt="pinkie pie, balloons", steps=steps, width=size, height=size,
                                         speed=speed) for speed in Speed}
    best = {speed: float("inf") for speed in Speed}
    pixels: dict[Speed, list[np.ndarray]] = {}
    for _round in range(rounds):
        for speed, request in requests.items():
            started = time.perf_counter()
            outputs = generator.generate_batch(request, [BatchItem(request.prompt, "blurry", s, 1)
                                                         for s in range(seeds)])
            best[speed] = min(best[speed], (time.perf_counter() - started) / seeds)
            pixels[speed] = [np.asarray(out.images[0], dtype=np.float32) for out in outputs]
    diff = np.mean([np.abs(a - b).mean() for a, b in zip(pixels[Speed.NORMAL], pixels[Speed.FAST], strict=True)])
    worst = max(np.abs(a - b).mean() for a, b in zip(pixels[Speed.NORMAL], pixels[Speed.FAST], strict=True))
    return [f"{size}x{size}", steps, f"{best[Speed.NORMAL] * 1000:.0f}", f"{best[Speed.FAST] * 1000:.0f}",
            f"{best[Speed.NORMAL] / best[Speed.FAST]:.2f}x", f"{diff:.1f} (worst {worst:.1f})"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sd15", action="store_true", help="also SD1.5's architecture (random weights), 256x256")
    args = parser.parse_args()
    torch.set_num_threads(2)
    header = ["model", "size", "steps", "normal ms/image", "fast ms/image", "speed-up",
              "mean abs pixel diff (0-255)"]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        generator = Generator(load_model("tiny", ModelSettings(cache_dir=Path(scratch)), resolve_device("cpu")))
        rows.append(["tiny", *measure(generator, 512, args.steps, args.seeds, args.rounds)])
    if args.sd15:
        from models import sd15_pipeline  # type: ignore[import-not-found]

        pipeline = sd15_pipeline(torch.device("cpu"), torch.float32)
        pipeline.set_progress_bar_config(disable=True)
        generator = Generator(LoadedModel(pipeline, "random-sd15", torch.device("cpu"), torch.float32))
        rows.append(["SD1.5 (random)", *measure(generator, 256, 6, 1, 1)])
    print(machine())
    print(table(f"speed fast (DeepCache, full UNet every {generator.fast_interval} steps) against normal, "
                f"DDIM, best of {args.rounds}", header, rows))


if __name__ == "__main__":
    main()
