"""The whole path on the ``tiny`` model, on this machine's CPU.

1. Time per image through ponybot (enqueue -> worker -> PNG in Redis -> event) against a plain
   diffusers loop over the same model and requests (goal: ratio at most 1.10), best of two rounds.
2. Batching: the same 16 jobs with ``worker.max_batch`` 4 against 1.
Run: ``.venv/bin/python bench/pipeline.py``
"""

from __future__ import annotations

import time

import torch
from common import machine, table, tiny_bench  # type: ignore[import-not-found]

from ponybot import keys
from ponybot.queue import enqueue
from ponybot.schemas import Job, build_request
from ponybot.settings import SafetySettings, Settings
from worker.runner import GenerationWorker
from worker.runtime import WorkerRuntime
from worker.safety import load_safety
from worker.schedulers import CARD_DDIM

ROUNDS = 2
PROMPTS = ["pinkie pie, balloons", "twilight sparkle reading", "rainbow dash flying", "rarity sewing"]


def through_ponybot(runtime: WorkerRuntime, conn, settings: Settings, jobs: list[Job]) -> float:  # type: ignore[no-untyped-def]
    conn.delete(keys.EVENTS_STREAM)
    started = time.perf_counter()
    for job in jobs:
        enqueue(conn, job, max_queue=1000, result_ttl_s=600)
    GenerationWorker(runtime).work(burst=True, logging_level="WARNING")
    elapsed = time.perf_counter() - started
    assert conn.xlen(keys.EVENTS_STREAM) == len(jobs)
    return elapsed


def main() -> None:
    with tiny_bench(threads=2) as bench:
        conn, settings, generator, folder = bench.conn, bench.settings, bench.generator, bench.folder
        runtime = WorkerRuntime(settings, conn, generator, "bench", load_safety(SafetySettings(tagger="none"),
                                                                               settings.model.cache_dir))
        requests = [build_request(settings.limits, prompt=PROMPTS[i % 4], negative_prompt="blurry", steps=10,
                                  width=512, height=512, seed=i, clip_skip=1) for i in range(8)]

        from diffusers import DDIMScheduler, StableDiffusionPipeline

        plain = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False,
                                                        low_cpu_mem_usage=False)
        plain.scheduler = DDIMScheduler.from_config(plain.scheduler.config, **CARD_DDIM)
        plain.set_progress_bar_config(disable=True)
        plain_s: list[float] = []
        ours_s: list[float] = []
        for round_ in range(ROUNDS + 1):  # round 0 warms both up; then alternated, best of each
            batch = requests[:2] if round_ == 0 else requests
            started = time.perf_counter()
            for request in batch:
                plain(request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=request.steps,
                      guidance_scale=request.cfg, width=request.width, height=request.height,
                      generator=torch.Generator("cpu").manual_seed(request.seed or 0))
            plain_s.append(time.perf_counter() - started)
            ours_s.append(through_ponybot(runtime, conn, settings, [Job.create(r) for r in batch]))
        best_plain, best_ours = min(plain_s[1:]), min(ours_s[1:])
        rows = [[len(requests), f"{best_plain / len(requests) * 1000:.0f}",
                 f"{best_ours / len(requests) * 1000:.0f}", f"{best_ours / best_plain:.3f}"]]

        batch_rows = []
        shapes = [build_request(settings.limits, prompt=PROMPTS[i % 4], steps=10, width=256, height=256, seed=i)
                  for i in range(16)]
        timings: dict[int, list[float]] = {1: [], 4: []}
        for _round in range(ROUNDS):
            for max_batch, elapsed in timings.items():
                runtime.settings = settings.model_copy(update={"worker": settings.worker.model_copy(
                    update={"max_batch": max_batch, "batch_window_ms": 0})})
                elapsed.append(through_ponybot(runtime, conn, settings, [Job.create(r) for r in shapes]))
        for max_batch, elapsed in timings.items():
            best = min(elapsed)
            batch_rows.append([max_batch, len(shapes), f"{best:.2f}", f"{len(shapes) / best:.2f}"])
    print(machine())
    print(table(f"tiny model, 512x512, 10 DDIM steps, CFG 7.5: per image, best of {ROUNDS} rounds",
                ["images", "plain diffusers ms", "ponybot ms (queue, PNG, classifier, event)", "ratio"], rows))
    print(table(f"batching across jobs: 16 jobs of 256x256, 10 steps, best of {ROUNDS} rounds",
                ["max_batch", "jobs", "seconds", "images/s"], batch_rows))


if __name__ == "__main__":
    main()
