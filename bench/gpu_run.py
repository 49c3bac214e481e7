"""bench/gpu.py's paths, budget and recorder (imported once a device is known to exist)."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from common import machine  # type: ignore[import-not-found]
from models import sd15_pipeline, tiny_pipeline  # type: ignore[import-not-found]

from ponybot.errors import PonybotError
from ponybot.schemas import GenerationRequest
from worker.generate import BatchItem, Generator
from worker.loading import LoadedModel, configure_inductor

FLOP_PER_IMAGE = 42.7e12  # SD1.5 at 512x512: 25 CFG steps at 1.6 TFLOP + the VAE decode
PEAK_FP16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12, "A10": 125e12}
PROMPT = "pinkie pie, smiling, balloons, party, outdoors, detailed background"
NEGATIVE = "blurry"
#: (name, pipeline, torch.compile mode or None)
PATHS = [("plain diffusers eager", "plain", None), ("plain diffusers compiled", "plain", "default"),
         ("ponybot eager", "ours", None), ("ponybot compiled", "ours", "default"),
         ("ponybot CUDA graphs", "ours", "reduce-overhead"), ("ponybot worker path", "worker", None)]


@dataclass
class Budget:
    seconds: float
    started: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.started)


class Recorder:
    """Results as they come: printed, appended to ``gpu_bench.jsonl``, the table rewritten."""

    def __init__(self, out: Path, device: torch.device, tiny: bool) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.lines = out / "gpu_bench.jsonl"
        self.lines.write_text("")
        self.best: dict[tuple[str, int], tuple[float, float]] = {}
        self.notes: list[str] = []
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
        self.peak = None if tiny else next((p for key, p in PEAK_FP16.items() if key in name), None)

    def write(self, **record: Any) -> None:
        with self.lines.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def note(self, text: str) -> None:
        print(text, flush=True)
        self.notes.append(text)
        self.write(note=text)
        self.table()

    def result(self, path: str, batch: int, per_image: float, memory: float, round_: int) -> None:
        old = self.best.get((path, batch))
        if old is None or per_image < old[0]:
            self.best[path, batch] = (per_image, memory)
        print(f"  round {round_}: {path:<26} batch {batch:>2}  {per_image:.4f} s/image  {1 / per_image:7.2f} images/s",
              flush=True)
        self.write(path=path, batch=batch, round=round_, s_per_image=per_image, peak_gib=memory)
        self.table()

    def table(self) -> str:
        header = (f"{'path':<26} {'batch':>5} {'s/image':>8} {'images/s':>9} {'peak GiB':>9} {'vs plain':>9} "
                  f"{'of fp16 peak':>12}")
        rows = [header, "-" * len(header)]
        for (path, batch), (per_image, memory) in sorted(self.best.items(), key=lambda item: (item[0][1], [
                name for name, _kind, _mode in PATHS].index(item[0][0]))):
            plain = self.best.get(("plain diffusers eager", batch))
            versus = f"{plain[0] / per_image:.2f}x" if plain else "-"
            share = f"{FLOP_PER_IMAGE / self.peak / per_image:.1%}" if self.peak else "-"
            rows.append(f"{path:<26} {batch:>5} {per_image:>8.4f} {1 / per_image:>9.2f} {memory:>9.2f} {versus:>9} "
                        f"{share:>12}")
        text = "\n".join([*rows, "", *self.notes])
        (self.out / "gpu_bench_table.txt").write_text(text + "\n")
        return text


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """(seconds, peak GiB) of one run."""
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    run()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return time.perf_counter() - started, peak


class Bench:
    def __init__(self, args: argparse.Namespace, device: torch.device, recorder: Recorder, budget: Budget) -> None:
        self.args, self.device, self.recorder, self.budget = args, device, recorder, budget
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        build = tiny_pipeline if args.tiny else sd15_pipeline
        self.size = 256 if args.tiny else 512
        self.plain = build(device, dtype)
        self.ours_pipeline = build(device, dtype)
        if device.type == "cuda":  # as worker.loading.load_model does
            self.ours_pipeline.unet.to(memory_format=torch.channels_last)
            self.ours_pipeline.vae.to(memory_format=torch.channels_last)
            self.ours_pipeline.fuse_qkv_projections()
        for pipeline in (self.plain, self.ours_pipeline):
            pipeline.set_progress_bar_config(disable=True)
        self.eager = {kind: (p.unet, p.vae.decoder) for kind, p in (("plain", self.plain),
                                                                     ("ours", self.ours_pipeline))}
        self.compiled: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.generator = Generator(LoadedModel(self.ours_pipeline, "random-sd15", device, dtype))
        self.request = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, steps=args.steps,
                                         width=self.size, height=self.size, clip_skip=2)
        self.ready: list[tuple[str, int]] = []  #: warmed up: measured in the rounds
        self.slowest_compile_s = args.compile_guess_s
        self.run_s: dict[tuple[str, int], float] = {}
        self.images: dict[tuple[str, int], int] = {}
        self.worker: Any = None

    def use(self, kind: str, mode: str | None) -> None:
        """Put the eager or a compiled UNet and VAE decoder into a pipeline."""
        pipeline = self.plain if kind == "plain" else self.ours_pipeline
        unet, decoder = self.eager[kind]
        if mode is not None:
            if (kind, mode) not in self.compiled:
                self.compiled[kind, mode] = (torch.compile(unet, mode=mode, fullgraph=True),
                                             torch.compile(decoder, mode=mode, fullgraph=True))
            unet, decoder = self.compiled[kind, mode]
        pipeline.unet, pipeline.vae.decoder = unet, decoder
        if kind == "ours":
            self.generator.cuda_graphs = mode == "reduce-overhead"

    def runner(self, path: str, batch: int) -> Callable[[], Any]:
        kind, mode = next((k, m) for name, k, m in PATHS if name == path)
        if kind == "worker":
            return lambda: self.worker.run(batch)

        def run() -> Any:
            self.use(kind, mode)
            if kind == "plain":
                return self.plain([PROMPT] * batch, negative_prompt=[NEGATIVE] * batch, guidance_scale=7.5,
                                  num_inference_steps=self.args.steps, width=self.size, height=self.size,
                                  generator=[torch.Generator("cpu").manual_seed(i) for i in range(batch)])
            return self.generator.generate_batch(self.request, [BatchItem(PROMPT, NEGATIVE, i, 1)
                                                               for i in range(batch)])
        return run

    def warm(self, path: str, batch: int, compiling: bool) -> None:
        """First run of a (path, batch): a compile when ``compiling``, skipped when it cannot fit."""
        owed = sum(self.run_s.values()) * self.args.rounds
        needs = (self.slowest_compile_s * 1.3 if compiling else 0.0) + owed
        if self.budget.left() < needs:
            self.recorder.note(f"skipped {path} at batch {batch}: needs about {needs:.0f} s "
                               f"({'compile and ' if compiling else ''}measurements owed), "
                               f"{max(0.0, self.budget.left()):.0f} s left")
            return
        run = self.runner(path, batch)
        images = batch * (2 if path == "ponybot worker path" else 1)
        first, _peak = timed(run, self.device)
        if compiling:
            self.slowest_compile_s = max(self.slowest_compile_s if self.ready else 0.0, first)
            self.recorder.note(f"compiled {path} at batch {batch} in {first:.0f} s")
        second, peak = timed(run, self.device)  # a second warm run: graphs are captured on the second call
        self.run_s[path, batch] = second
        self.images[path, batch] = images
        self.ready.append((path, batch))
        self.recorder.result(path, batch, second / images, peak, 0)

    def rounds(self) -> None:
        for round_ in range(1, self.args.rounds + 1):
            for path, batch in self.ready:
                if self.budget.left() < self.run_s[path, batch] * 1.2:
                    self.recorder.note(f"time budget reached in round {round_}: stopping")
                    return
                elapsed, peak = timed(self.runner(path, batch), self.device)
                self.recorder.result(path, batch, elapsed / self.images[path, batch], peak, round_)

    def sync_check(self) -> None:
        """ponybot's denoising loop under the sync debug mode: every host sync inside it is reported."""
        if self.device.type != "cuda":
            return
        self.use("ours", None)

        def on_step(step: int, total: int, _latents: torch.Tensor) -> None:
            torch.cuda.set_sync_debug_mode("warn" if step < total else "default")

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                self.generator.generate_batch(self.request, [BatchItem(PROMPT, NEGATIVE, 0, 1)], on_step=on_step)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
        self.recorder.note(f"sync check (steps 2..{self.args.steps} of ponybot's loop, eager): "
                           f"{len(syncs)} host sync(s)" + (f"; first: {syncs[0]}" if syncs else ""))


class WorkerPath:
    """The whole worker on this GPU: Redis queue, batching, classifier, PNGs, events."""

    def __init__(self, generator: Generator, scratch: Path, bench: Bench) -> None:
        from ponybot.queue import connect
        from ponybot.redis_server import EmbeddedRedis
        from ponybot.settings import Settings
        from worker.safety import load_safety

        self.bench = bench
        self.server = EmbeddedRedis(scratch / "redis", persistent=False)
        self.conn = connect(self.server.start())
        self.settings = Settings()
        # the workers' own image check (open_nsfw, and the tagger where the model cache holds it)
        classifier = load_safety(self.settings.safety, self.settings.model.cache_dir, download=False)
        if classifier.missing:
            bench.recorder.note(f"worker path without {', '.join(classifier.missing)} (not in the model cache)")
        from worker.runtime import WorkerRuntime

        self.runtime = WorkerRuntime(self.settings, self.conn, generator, "bench-gpu", classifier)

    def run(self, batch: int) -> None:
        """Two batches of ``batch`` jobs through the worker (so its post stage overlaps the second)."""
        from ponybot import keys
        from ponybot.queue import enqueue
        from ponybot.schemas import Job
        from worker.runner import GenerationWorker

        best = next((m for name, _k, m in reversed(PATHS[2:5]) if (name, batch) in self.bench.ready), None)
        self.bench.use("ours", best)
        self.runtime.settings = self.settings.model_copy(update={"worker": self.settings.worker.model_copy(
            update={"max_batch": batch, "batch_window_ms": 0})})
        self.conn.delete(keys.EVENTS_STREAM)
        jobs = [Job.create(self.bench.request.model_copy(update={"seed": i})) for i in range(2 * batch)]
        for job in jobs:
            enqueue(self.conn, job, max_queue=1000, result_ttl_s=600)
        GenerationWorker(self.runtime).work(burst=True, logging_level="WARNING")
        if self.conn.xlen(keys.EVENTS_STREAM) != len(jobs):
            raise RuntimeError("the worker path lost a job")

    def close(self) -> None:
        self.server.stop()


def run(args: argparse.Namespace, device: torch.device) -> int:
    """Every path, warmed up and then measured in alternating rounds, within the budget."""
    budget = Budget(args.budget_s)
    out = Path(os.environ.get("OUT") or ".bench-out")
    recorder = Recorder(out, device, args.tiny or args.steps != 25)  # the FLOP count is for 25 steps
    print(machine())
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, fp16, SDPA")
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        if device.type == "cuda":
            configure_inductor(Path(scratch))
            torch._dynamo.config.cache_size_limit = 64
        bench = Bench(args, device, recorder, budget)
        size = bench.size
        print(f"built in {args.budget_s - budget.left():.1f} s; {size}x{size}, {args.steps} steps, CFG 7.5; "
              f"results in {out}/", flush=True)
        try:
            bench.worker = WorkerPath(bench.generator, Path(scratch), bench)
        except (ImportError, OSError, PonybotError) as error:  # a lent machine may lack Redis: the rest still runs
            recorder.note(f"worker path not run: {type(error).__name__}: {error}")
        try:
            for batch in batches:
                for name in ("plain diffusers eager", "ponybot eager"):
                    bench.warm(name, batch, compiling=False)
            bench.sync_check()
            if device.type == "cuda" and not args.no_compile:
                # batch 1 and the largest first, CUDA graphs first: the figures the goals name
                order = sorted(batches, key=lambda b: (b not in (1, max(batches)), b))
                for batch in order:
                    for name in ("ponybot CUDA graphs", "ponybot compiled", "plain diffusers compiled"):
                        bench.warm(name, batch, compiling=True)
            elif device.type != "cuda":
                recorder.note("compiled paths: CUDA only, not run here")
            if bench.worker is not None:
                for batch in batches:
                    bench.warm("ponybot worker path", batch, compiling=False)
            bench.rounds()
        finally:
            if bench.worker is not None:
                bench.worker.close()
            print(f"\nbest of {args.rounds} round(s), per image, {size}x{size}, {args.steps} steps:")
            print(recorder.table(), flush=True)
            print(f"whole run: {args.budget_s - budget.left():.0f} s")
    return 0

