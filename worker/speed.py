"""A worker's own speed, measured at warm-up, and each job's time limit derived from it.

The worker that runs a job enforces its limit, not whoever enqueued it: only the worker knows
whether it is an H100 or two CPU cores, and a queue may be served by both. The limit is

    ALLOWANCE_S + SAFETY x (measured seconds of the job's denoising steps and of its images' decoding)

with every figure scaled per pixel from the size measured (the default size), or, when the
operator sets ``worker.step_budget_s``, ``ALLOWANCE_S + step_budget_s`` per 512x512 step (the
override wins). ``worker.job_timeout_s``, when set, caps either.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch

from ponybot.schemas import GenerationRequest, Job, JobKind, parse_size
from ponybot.settings import Settings, WorkerSettings
from worker.generate import BatchItem, Generator

log = logging.getLogger(__name__)

#: Seconds every job gets on top of its measured work (prompt encoding, PNGs, a slow first call).
ALLOWANCE_S = 60.0
#: How many times its measured work a job may take (a busy host, a shared GPU, a cold cache).
SAFETY = 4.0
#: Denoising steps of the measuring run: the second step is timed alone, past the first call's costs.
MEASURE_STEPS = 2
#: The unit of work: one denoising step of one 512x512 image (with classifier-free guidance).
UNIT_PIXELS = 512 * 512


@dataclass(frozen=True)
class StepSpeed:
    """What this worker measured, per 512x512 image."""

    step_s: float  #: seconds per denoising step
    image_s: float  #: seconds per image outside the steps (prompt encoding, VAE decoding)
    size: str  #: the size measured, e.g. ``512x512``

    def describe(self) -> str:
        return f"{self.step_s:.3g} s per 512x512 step + {self.image_s:.3g} s per image (measured at {self.size})"


def measure_speed(generator: Generator, settings: Settings, size: tuple[int, int] | None = None) -> StepSpeed:
    """Time a short generation at ``size`` (default: the default size), with the default sampler and CFG."""
    defaults = settings.defaults
    width, height = size or parse_size(defaults.size)
    request = GenerationRequest(prompt="warm-up", width=width, height=height, steps=MEASURE_STEPS, cfg=defaults.cfg,
                                sampler=defaults.sampler, clip_skip=defaults.clip_skip)
    device = generator.model.device
    marks: list[float] = []

    def mark(_step: int, _total: int, _latents: torch.Tensor) -> None:
        if device.type == "cuda":  # kernels run asynchronously: wait for the step to be done
            torch.cuda.synchronize(device)
        marks.append(time.perf_counter())

    started = time.perf_counter()
    generator.generate_batch(request, [BatchItem("warm-up", "", 0, 1)], on_step=mark)
    total = time.perf_counter() - started
    step = marks[-1] - marks[-2]
    scale = width * height / UNIT_PIXELS
    speed = StepSpeed(step_s=step / scale, image_s=max(0.0, total - step * MEASURE_STEPS) / scale,
                      size=f"{width}x{height}")
    log.info("measured this worker's speed: %s", speed.describe())
    return speed


def job_work(jobs: list[Job]) -> tuple[float, float]:
    """The 512x512 steps and the 512x512 images that ``jobs`` (one batch) generate."""
    steps = images = 0.0
    for job in jobs:
        request = job.request
        pixels = request.width * request.height * (4 if job.kind is JobKind.UPSCALE else 1)
        if job.kind is JobKind.OUTPAINT and job.margins is not None:  # the canvas (at most the upscale budget)
            margins = job.margins
            pixels = (request.width + margins.left + margins.right) * (request.height + margins.top + margins.bottom)
        images += request.count * pixels / UNIT_PIXELS
        steps += request.steps * request.count * pixels / UNIT_PIXELS
    return steps, images


def time_limit(jobs: list[Job], settings: WorkerSettings, speed: StepSpeed | None) -> int:
    """Whole seconds (rounded up) ``jobs`` (one batch) may run on a worker of ``speed``; see the module's doc."""
    steps, images = job_work(jobs)
    if settings.step_budget_s is not None:
        limit = ALLOWANCE_S + settings.step_budget_s * steps
    elif speed is not None:
        limit = ALLOWANCE_S + SAFETY * (speed.step_s * steps + speed.image_s * images)
    else:
        raise ValueError("no measured speed and no worker.step_budget_s: measure the worker first")
    if settings.job_timeout_s is not None:
        limit = min(limit, settings.job_timeout_s)
    return max(1, math.ceil(limit))


def describe_limit(limit: int, settings: WorkerSettings, speed: StepSpeed | None) -> str:
    """How a limit came about, for the message of a job that ran past it (names the setting to change)."""
    if settings.step_budget_s is not None:
        source = f"worker.step_budget_s = {settings.step_budget_s:g} s per 512x512 step"
    else:
        measured = speed.describe() if speed is not None else "not measured"
        source = f"{SAFETY:g} x this worker's measured speed, {measured}; set worker.step_budget_s to override"
    capped = "" if settings.job_timeout_s is None else f", at most worker.job_timeout_s = {settings.job_timeout_s}"
    return f"it ran past its time limit of {limit} s ({ALLOWANCE_S:g} s + {source}{capped})"
