"""Load the pipeline once per process: hub id, diffusers folder, single .safetensors, or ``tiny``."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ponybot.errors import ConfigError, ModelLoadError
from ponybot.hints import ponybot_command
from ponybot.settings import ModelSettings
from worker.tiny import TINY_SOURCE, ensure_tiny_pipeline

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """The resident pipeline and what describes it."""

    pipeline: Any
    name: str
    device: torch.device
    dtype: torch.dtype


def resolve_device(setting: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; a device this machine cannot run is a ConfigError."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except (RuntimeError, ValueError):
        raise ConfigError(f"worker.device: torch does not know the device {setting!r} "
                          "(use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"worker.device: {setting!r} needs a CUDA GPU, and torch sees none on this machine "
                          "(use cpu or auto; on a GPU host install CUDA torch: make run TORCH=torch)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"worker.device: {setting!r} does not exist here: this machine has "
                          f"{torch.cuda.device_count()} CUDA GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"worker.device: {setting!r} is not available on this machine (use cpu or auto)")
    return device


def model_name(source: str, settings: ModelSettings) -> str:
    """The name written into PNG metadata: ``model.name``, else the source's last part."""
    if settings.name:
        return settings.name
    return Path(source.rstrip("/")).stem if source != TINY_SOURCE else TINY_SOURCE


def load_model(source: str, settings: ModelSettings, device: torch.device) -> LoadedModel:
    """Load ``source`` onto ``device`` (fp16 on CUDA, fp32 elsewhere); ModelLoadError says why not."""
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    started = time.perf_counter()
    log.info("loading model %s on %s", source, device)
    pipeline = _load_pipeline(source, settings, dtype)
    pipeline.set_progress_bar_config(disable=True)
    pipeline = pipeline.to(device)
    if device.type == "cuda":
        pipeline.unet.to(memory_format=torch.channels_last)
        pipeline.vae.to(memory_format=torch.channels_last)
    log.info("loaded model %s on %s (%s) in %.1f s", source, device, dtype, time.perf_counter() - started)
    return LoadedModel(pipeline, model_name(source, settings), device, dtype)


def _load_pipeline(source: str, settings: ModelSettings, dtype: torch.dtype) -> Any:
    import diffusers
    import transformers
    from diffusers import StableDiffusionPipeline

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()

    common: dict[str, Any] = {
        "dtype": dtype, "low_cpu_mem_usage": False, "safety_checker": None, "requires_safety_checker": False
    }
    if source == TINY_SOURCE:
        source = str(ensure_tiny_pipeline(settings.cache_dir))
    path = Path(source).expanduser()
    if path.suffix in (".ckpt", ".pt", ".bin"):
        raise ModelLoadError(
            f"{path.name}: pickle checkpoints can run code when loaded; use the .safetensors file instead"
        )
    if path.suffix == ".safetensors":
        return _load_single_file(path, settings, common)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"{path} is not a diffusers folder (no model_index.json)")
        return _guarded(source, lambda: StableDiffusionPipeline.from_pretrained(path, local_files_only=True, **common))
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ModelLoadError(f"model path {source} does not exist (and it is no hub id of the form owner/name)")
    try:
        return StableDiffusionPipeline.from_pretrained(source, cache_dir=settings.cache_dir, **common)
    except Exception as error:  # offline, not in the cache, no such repository: one plain message
        raise ModelLoadError(cannot_fetch(source, settings, error)) from error


def cannot_fetch(source: str, settings: ModelSettings, error: Exception) -> str:
    """What failed when a hub model could not be fetched, and the three ways on."""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    return (
        f"model.source: could not fetch {source} from the Hugging Face hub, and it is not in the cache "
        f"{settings.cache_dir} ({type(error).__name__}: {reason}). Either run once on a host with internet "
        f"(the first run downloads it into model.cache_dir, about 2-4 GB; copy that folder here), "
        "or set model.source to a local diffusers folder or .safetensors file, "
        f"or try the tiny test model: PONYBOT_MODEL__SOURCE=tiny make run "
        f"(or PONYBOT_MODEL__SOURCE=tiny {ponybot_command()} up)"
    )


def _load_single_file(path: Path, settings: ModelSettings, common: dict[str, Any]) -> Any:
    from diffusers import StableDiffusionPipeline

    if not path.is_file():
        raise ModelLoadError(f"checkpoint {path} does not exist")
    config = settings.config_dir
    if config is None or not (config / "model_index.json").is_file():
        raise ModelLoadError(
            f"{path.name} is a single-file checkpoint: set model.config_dir to a local diffusers folder "
            "of the same architecture (model_index.json, component configs, tokenizer) so it loads offline"
        )
    os.environ["HF_HUB_OFFLINE"] = "1"  # never let diffusers fall back to a download
    return _guarded(
        str(path),
        lambda: StableDiffusionPipeline.from_single_file(path, config=str(config), local_files_only=True, **common),
    )


def _guarded(source: str, load: Any) -> Any:
    try:
        return load()
    except ModelLoadError:
        raise
    except Exception as error:  # diffusers raises many types; the operator needs one message
        raise ModelLoadError(f"could not load model {source}: {type(error).__name__}: {error}") from error


def compile_model(model: LoadedModel, cache_dir: Path, mode: str) -> None:
    """torch.compile the UNet and the VAE decoder, kernels cached on disk across restarts.

    Before compiling: the attention's q, k and v projections fused into one matmul, and
    inductor told to run 1x1 convolutions as matmuls and to tune its kernels' tiling
    (diffusers' guide to fast text-to-image inference). The VAE decodes batches in slices,
    so its decoder compiles once, for batch 1.
    """
    import torch._inductor.config as inductor

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str((cache_dir / "inductor").resolve()))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    inductor.conv_1x1_as_mm = True
    inductor.coordinate_descent_tuning = True
    inductor.epilogue_fusion = False
    inductor.coordinate_descent_check_all_directions = True
    pipeline = model.pipeline
    pipeline.fuse_qkv_projections()
    pipeline.unet = torch.compile(pipeline.unet, mode=mode, fullgraph=True)
    pipeline.vae.decoder = torch.compile(pipeline.vae.decoder, mode=mode, fullgraph=True)
