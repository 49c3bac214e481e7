"""SD1.5 on one GPU, honestly: plain diffusers and ponybot at the same batch sizes, eager, compiled, with
CUDA graphs, and the whole worker path, in one run that fits a short lease.

An SD1.5-shaped pipeline with random weights (nothing downloaded) at 512x512, 25 steps, CFG 7.5,
fp16. Every path runs at every batch size (``--batches``):

* plain diffusers, eager, and compiled (torch.compile of its UNet and VAE decoder);
* ponybot's generator, eager, compiled, and compiled with CUDA graphs (``reduce-overhead``);
* the worker path: Redis queue, batching, the image classifier, PNGs, events (best ponybot variant).

Each (path, batch) is warmed up first (a compile counts against the budget and is timed), then
measured in alternating rounds (``--rounds``; best of each). Each result is written to ``$OUT``
(else ``.bench-out/``) the moment it is known: ``gpu_bench.jsonl`` and ``gpu_bench_table.txt``.
The run keeps a hard time budget (``--budget-s``, 330 s: with the build, under 6 minutes): a compile
starts only when the time left covers the slowest compile seen so far (``--compile-guess-s``
before the first) plus the measurements still owed, else it is skipped and reported. Once, on
CUDA, ponybot's denoising loop runs under ``torch.cuda.set_sync_debug_mode`` and any host sync is
reported. Without a CUDA device it says so and exits 0; ``--device cpu --tiny`` runs the same
code (eager paths and the worker path) on the tiny model, to check the script.

Run: ``.venv/bin/python bench/gpu.py`` (on a GPU host; bench/gpu_device.sh on a lent machine)
"""

from __future__ import annotations

import argparse
import sys

import torch


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="the tiny model (to check this script on a CPU)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--budget-s", type=float, default=330)
    parser.add_argument("--compile-guess-s", type=float, default=90, help="assumed length of the first compile")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device on this machine: skipping (run it on a GPU host)")
        return 0
    from gpu_run import run  # type: ignore[import-not-found]  # diffusers and the worker: only once needed

    return int(run(args, device))


if __name__ == "__main__":
    sys.exit(main())
