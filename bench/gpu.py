"""SD1.5 on a GPU: plain diffusers against the ponybot worker path, eager and compiled.

An SD1.5-shaped pipeline with random weights (nothing downloaded) at 512x512, 25 steps,
CFG 7.5, fp16: seconds per image, images per second at batch 1, 2, 4 and 8, peak GPU
memory, and the share of the card's dense fp16 peak each reaches (42.7 TFLOP per image:
1.6 TFLOP per CFG step, 2.5 TFLOP for the VAE decode). Prints as it goes and stops
starting new measurements after ``--budget-s`` (default: 420 s, to end within 8 minutes).
Without a CUDA device it says so and exits 0. ``--device cpu --tiny`` runs the same code
on the tiny model, to check the script itself.

Run: ``.venv/bin/python bench/gpu.py`` (on a GPU host)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import machine  # type: ignore[import-not-found]

from ponybot.schemas import GenerationRequest
from worker.generate import BatchItem, Generator
from worker.loading import LoadedModel, compile_model
from worker.tiny import SD15_SCHEDULER, build_tiny_pipeline, write_tokenizer

FLOP_PER_IMAGE = 42.7e12  # 25 CFG steps at 1.6 TFLOP + the VAE decode
PEAK_FP16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12, "A10": 125e12}
PROMPT = "pinkie pie, smiling, balloons, party, outdoors, detailed background"


def sd15_pipeline(device: torch.device, dtype: torch.dtype) -> Any:
    """SD1.5's architecture with random weights, built on the device."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        vocab = write_tokenizer(Path(scratch))
        tokenizer = CLIPTokenizer.from_pretrained(scratch)
    with torch.device(device):
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            sample_size=512)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=max(vocab, 49408), hidden_size=768, intermediate_size=3072,
                                            num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                            hidden_act="quick_gelu", bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                                            pad_token_id=vocab - 1))
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                       scheduler=DDIMScheduler(**SD15_SCHEDULER), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    return pipeline.to(device, dtype)


def tiny_pipeline(device: torch.device, dtype: torch.dtype) -> Any:
    from diffusers import StableDiffusionPipeline

    with tempfile.TemporaryDirectory() as scratch:
        build_tiny_pipeline(Path(scratch))
        pipeline = StableDiffusionPipeline.from_pretrained(scratch, safety_checker=None,
                                                           requires_safety_checker=False, low_cpu_mem_usage=False)
    return pipeline.to(device, dtype)


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FP16.items() if key in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(run: Any, batch: int, device: torch.device) -> tuple[float, float]:
    """(seconds per image, peak GiB) of one timed run after one warm-up run."""
    run(batch)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    run(batch)
    sync(device)
    elapsed = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return elapsed / batch, peak


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="the tiny model (to check this script on a CPU)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--compile-mode", default="max-autotune-no-cudagraphs")
    parser.add_argument("--budget-s", type=float, default=420)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device on this machine: skipping (run it on a GPU host)")
        return 0
    started = time.perf_counter()
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    print(machine())
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, fp16, SDPA")
    pipeline = (tiny_pipeline if args.tiny else sd15_pipeline)(device, dtype)
    pipeline.set_progress_bar_config(disable=True)
    size = 256 if args.tiny else 512
    peak = peak_flops(device)
    print(f"built in {time.perf_counter() - started:.1f} s; {size}x{size}, {args.steps} steps, CFG 7.5")
    header = f"{'path':<28} {'batch':>5} {'s/image':>8} {'images/s':>9} {'peak GiB':>9} {'of peak':>8}"
    print(header)
    print("-" * len(header))

    results: dict[tuple[str, int], float] = {}

    def report(path: str, batch: int, per_image: float, memory: float) -> None:
        results[path, batch] = per_image
        share = f"{FLOP_PER_IMAGE / peak / per_image:.1%}" if peak and not args.tiny else "-"
        print(f"{path:<28} {batch:>5} {per_image:>8.3f} {1 / per_image:>9.2f} {memory:>9.2f} {share:>8}", flush=True)

    def out_of_time(needs_s: float = 0.0) -> bool:
        if time.perf_counter() - started + needs_s > args.budget_s:
            print(f"time budget ({args.budget_s:.0f} s) reached: stopping here", flush=True)
            return True
        return False

    try:
        run_all(args, pipeline, device, dtype, size, report, out_of_time)
    finally:
        print_goals(results, args.steps)
    return 0


def run_all(args: argparse.Namespace, pipeline: Any, device: torch.device, dtype: torch.dtype, size: int,
            report: Callable[[str, int, float, float], None], out_of_time: Callable[..., bool]) -> None:
    batches = [int(b) for b in args.batches.split(",")]

    def plain(batch: int) -> None:
        pipeline([PROMPT] * batch, negative_prompt=["blurry"] * batch, num_inference_steps=args.steps,
                 guidance_scale=7.5, width=size, height=size, output_type="pil",
                 generator=[torch.Generator("cpu").manual_seed(i) for i in range(batch)])

    for batch in batches:
        if out_of_time():
            return
        report("plain diffusers (eager)", batch, *measure(plain, batch, device))

    if device.type == "cuda":
        pipeline.unet.to(memory_format=torch.channels_last)
        pipeline.vae.to(memory_format=torch.channels_last)
    generator = Generator(LoadedModel(pipeline, "random-sd15", device, dtype))
    request = GenerationRequest(prompt=PROMPT, negative_prompt="blurry", steps=args.steps, width=size, height=size,
                                clip_skip=2)

    def ours(batch: int) -> None:
        generator.generate_batch(request, [BatchItem(PROMPT, "blurry", i, 1) for i in range(batch)])

    for batch in batches:
        if out_of_time():
            return
        report("ponybot worker (eager)", batch, *measure(ours, batch, device))

    if args.no_compile or device.type != "cuda":
        return
    # batch 1 and the largest first: the two numbers the goals name, should the budget run out
    order = sorted(batches, key=lambda b: (b not in (1, max(batches)), b))
    last_compile_s = 120.0  # a guess until the first compile says how long one takes
    with tempfile.TemporaryDirectory() as cache:
        compile_model(generator.model, Path(cache), args.compile_mode)
        for batch in order:
            if out_of_time(needs_s=last_compile_s * 1.2):
                return
            compiling = time.perf_counter()
            ours(batch)
            last_compile_s = time.perf_counter() - compiling
            print(f"  (compiled batch {batch} in {last_compile_s:.0f} s)", flush=True)
            report("ponybot worker (compiled)", batch, *measure(ours, batch, device))


def print_goals(results: dict[tuple[str, int], float], steps: int) -> None:
    """The issue's goals (H100, 25 steps) against what was measured."""
    ours = {key: value for key, value in results.items() if key[0].startswith("ponybot")}
    plain_1 = results.get(("plain diffusers (eager)", 1))
    if not ours:
        return
    batch_1 = min((value for (_path, batch), value in ours.items() if batch == 1), default=None)
    best = min(ours.values())
    rows = [("batch 1 s/image", "<= 0.35", f"{batch_1:.3f}" if batch_1 else "-",
             batch_1 is not None and batch_1 <= 0.35),
            ("best images/s (batched)", ">= 8", f"{1 / best:.2f}", 1 / best >= 8),
            ("best images/s / plain diffusers batch 1", ">= 2x", f"{plain_1 / best:.2f}x" if plain_1 else "-",
             plain_1 is not None and plain_1 / best >= 2)]
    print(f"goals at {steps} steps (set for an H100 at 25 steps):")
    for name, goal, value, met in rows:
        print(f"  {name:<42} {goal:>8} {value:>8}  {'met' if met else 'not met'}")


if __name__ == "__main__":
    sys.exit(main())
