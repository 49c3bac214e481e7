"""A worker process's start: its CPU threads, its models loaded, compiled and warmed up, its speed measured,
and the :class:`~worker.runtime.WorkerRuntime` that binds them to Redis."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid

import redis
import torch

from ponybot.cpus import cpu_threads
from ponybot.metrics import serve as serve_metrics
from ponybot.schemas import GenerationRequest, Job, parse_size
from ponybot.settings import Settings
from worker.generate import BatchItem, Generator
from worker.loading import CUDA_GRAPH_MODES, compile_mode, compile_model, load_inpaint_unet, load_model, resolve_device
from worker.networks import Catalog
from worker.runtime import WorkerRuntime
from worker.safety import load_safety
from worker.speed import StepSpeed, measure_speed

log = logging.getLogger(__name__)


def limit_cpu_threads(threads: int) -> None:
    """Cap torch's (and OpenMP's) threads in this process: several workers on one host share its cores."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(max(1, min(threads, 4)))
    except RuntimeError:  # only possible before torch's first parallel work; the intra-op cap still holds
        log.debug("torch inter-op threads were already set")


def default_worker_name(device: torch.device) -> str:
    return f"ponybot-{socket.gethostname()}-{device}-{uuid.uuid4().hex[:6]}"


def build_runtime(settings: Settings, conn: redis.Redis, *, model_source: str | None = None,
                  name: str | None = None, metrics_port: int = 0, models: list[str] | None = None,
                  measure_size: tuple[int, int] | None = None) -> WorkerRuntime:
    """Load the models (once, before any job is taken; default: the default model), measure each one's speed
    and bind them to Redis.

    ``model_source`` replaces the source of the first model (``ponybot worker --model``). The speed is
    measured at ``measure_size`` (default: ``defaults.size``), unless ``worker.step_budget_s`` makes it moot;
    a worker that will run one known job measures at that job's size.
    """
    device = resolve_device(settings.worker.device)
    threads = cpu_threads(settings)
    limit_cpu_threads(threads)
    log.info("using %d CPU thread(s)", threads)
    if device.type == "cpu":
        log.warning("running on the CPU: a real SD1.5 model takes minutes per image here")
    names = models or [settings.default_model]
    for key in names:
        settings.model_entry(key)  # a ConfigError naming a model that is not configured, before any load
    generators: dict[str, Generator] = {}
    speeds: dict[str, StepSpeed] = {}
    mode = compile_mode(settings.worker, device)
    for index, key in enumerate(names):
        entry = settings.model_entry(key)
        model = load_model(model_source if model_source and index == 0 else entry.source, settings.model, device,
                           entry=entry, key=key)
        catalog = Catalog(settings.model.lora_dir, settings.model.embeddings_dir, [model.architecture])
        generator = Generator(model, catalog, settings.model.lora_cache)
        generator.vae_decode = settings.worker.vae_decode
        if entry.inpaint_source:
            generator.inpaint_unet = load_inpaint_unet(entry.inpaint_source, settings.model.cache_dir, model)
        generator.fast_interval = settings.worker.fast_interval
        generators[key] = generator
        if mode is not None:
            compile_model(model, settings.model.cache_dir, mode)
            generator.cuda_graphs = mode in CUDA_GRAPH_MODES
            warm_up(generator, settings)
        if settings.worker.step_budget_s is None:
            speeds[key] = measure_speed(generator, settings, measure_size)
    classifier = load_safety(settings.safety, settings.model.cache_dir, threads=min(2, threads))
    registry = serve_metrics(metrics_port, conn, names)
    runtime = WorkerRuntime(settings, conn, generators, name or default_worker_name(device), classifier, registry,
                            speeds)
    width, height = parse_size(settings.defaults.size)
    for key in names:
        typical = Job.create(GenerationRequest(prompt="-", width=width, height=height, steps=settings.defaults.steps,
                                               count=settings.defaults.count, model=key))
        log.info("a default job of %s (%s, %d steps) may run %d s here", key, settings.defaults.size,
                 settings.defaults.steps, runtime.time_limit([typical]))
    return runtime


def warm_up(generator: Generator, settings: Settings) -> None:
    """Compile (and capture CUDA graphs) for every batch size this worker will run, before the first job.

    At the default size; other sizes compile and capture on their first job.
    """
    width, height = parse_size(settings.defaults.size)
    request = GenerationRequest(prompt="warm-up", width=width, height=height, steps=2)
    sizes = sorted({1, *(2**i for i in range(1, 5) if 2**i <= settings.worker.max_batch), settings.worker.max_batch})
    for size in sizes:
        started = time.perf_counter()
        for _run in range(2):  # CUDA graphs are recorded on a call after the first
            generator.generate_batch(request, [BatchItem("warm-up", "", 0, 1)] * size)
        log.info("compiled and warmed up batch size %d in %.1f s", size, time.perf_counter() - started)


