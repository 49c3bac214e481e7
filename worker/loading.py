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
from ponybot.keys import DEFAULT_MODEL_NAME
from ponybot.settings import ModelEntry, ModelSettings, WorkerSettings
from worker.networks import Architecture, model_hash
from worker.tiny import TINY_INPAINT_SOURCE, TINY_SOURCE, ensure_tiny_pipeline

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """The resident pipeline and what describes it."""

    pipeline: Any
    name: str  #: written into PNG metadata as ``Model``
    device: torch.device
    dtype: torch.dtype
    key: str = DEFAULT_MODEL_NAME  #: the model's name in the settings' table (its queue)
    hash: str | None = None  #: A1111's ``Model hash``: known for a single-file checkpoint

    @property
    def architecture(self) -> Architecture:
        return Architecture(int(self.pipeline.text_encoder.config.hidden_size),
                            int(self.pipeline.unet.config.cross_attention_dim))


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


def model_name(source: str, name: str | None) -> str:
    """The name written into PNG metadata: the model's ``name``, else the source's last part."""
    if name:
        return name
    return Path(source.rstrip("/")).stem if source != TINY_SOURCE else TINY_SOURCE


def load_model(source: str, settings: ModelSettings, device: torch.device, *, entry: ModelEntry | None = None,
               key: str = DEFAULT_MODEL_NAME) -> LoadedModel:
    """Load ``source`` onto ``device`` (fp16 on CUDA, fp32 elsewhere); ModelLoadError says why not.

    ``entry`` is the model's ``[models.NAME]`` table (its ``config_dir`` and metadata name).
    """
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    started = time.perf_counter()
    log.info("loading model %s on %s", source, device)
    config_dir = entry.config_dir if entry is not None else settings.config_dir
    pipeline = _load_pipeline(source, settings.cache_dir, config_dir, dtype)
    pipeline.set_progress_bar_config(disable=True)
    pipeline = pipeline.to(device)
    if device.type == "cuda":
        pipeline.unet.to(memory_format=torch.channels_last)
        pipeline.vae.to(memory_format=torch.channels_last)
    log.info("loaded model %s (%s) on %s (%s) in %.1f s", key, source, device, dtype, time.perf_counter() - started)
    single = Path(source).expanduser()
    checkpoint_hash = model_hash(single) if single.suffix == ".safetensors" and single.is_file() else None
    name = model_name(source, entry.name if entry is not None else settings.name)
    return LoadedModel(pipeline, name, device, dtype, key=key, hash=checkpoint_hash)


def _load_pipeline(source: str, cache_dir: Path, config_dir: Path | None, dtype: torch.dtype) -> Any:
    import diffusers
    import transformers
    from diffusers import StableDiffusionPipeline

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()

    common: dict[str, Any] = {
        "dtype": dtype, "low_cpu_mem_usage": False, "safety_checker": None, "requires_safety_checker": False
    }
    if source == TINY_SOURCE:
        source = str(ensure_tiny_pipeline(cache_dir))
    path = Path(source).expanduser()
    if path.suffix in (".ckpt", ".pt", ".bin"):
        raise ModelLoadError(
            f"{path.name}: pickle checkpoints can run code when loaded; use the .safetensors file instead"
        )
    if path.suffix == ".safetensors":
        return _load_single_file(path, config_dir, common)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"{path} is not a diffusers folder (no model_index.json)")
        return _guarded(source, lambda: StableDiffusionPipeline.from_pretrained(path, local_files_only=True, **common))
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ModelLoadError(f"model path {source} does not exist (and it is no hub id of the form owner/name)")
    try:
        return StableDiffusionPipeline.from_pretrained(source, cache_dir=cache_dir, **common)
    except Exception as error:  # offline, not in the cache, no such repository: one plain message
        raise ModelLoadError(cannot_fetch(source, cache_dir, error)) from error


def load_inpaint_unet(source: str, cache_dir: Path, model: LoadedModel) -> Any:
    """The 9-channel UNet of an inpainting checkpoint (``[models.NAME] inpaint_source``), on ``model``'s
    device and dtype: only the UNet is loaded, the model's text encoder and VAE serve it too."""
    from diffusers import UNet2DConditionModel

    if source == TINY_INPAINT_SOURCE:
        source = str(ensure_tiny_pipeline(cache_dir, inpaint=True))
    path = Path(source).expanduser()
    if path.is_dir():
        unet = _guarded(source, lambda: UNet2DConditionModel.from_pretrained(
            path, subfolder="unet", local_files_only=True, torch_dtype=model.dtype))
    elif source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ModelLoadError(f"inpaint_source {source}: give a diffusers folder (with unet/) or a hub id")
    else:
        try:
            unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", cache_dir=cache_dir,
                                                        torch_dtype=model.dtype)
        except Exception as error:  # offline, not in the cache, no such repository: one plain message
            raise ModelLoadError(cannot_fetch(source, cache_dir, error)) from error
    if unet.config.in_channels != 9:
        raise ModelLoadError(f"inpaint_source {source}: its UNet takes {unet.config.in_channels} channels, an "
                             "inpainting UNet takes 9 (latents, mask, masked picture): leave inpaint_source out "
                             "to inpaint with the model itself")
    log.info("loaded the inpainting UNet %s for model %s", source, model.key)
    return unet.to(model.device)


def cannot_fetch(source: str, cache_dir: Path, error: Exception) -> str:
    """What failed when a hub model could not be fetched, and the three ways on."""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    return (
        f"model.source: could not fetch {source} from the Hugging Face hub, and it is not in the cache "
        f"{cache_dir} ({type(error).__name__}: {reason}). Either run once on a host with internet "
        f"(the first run downloads it into model.cache_dir, about 2-4 GB; copy that folder here), "
        "or set model.source to a local diffusers folder or .safetensors file, "
        f"or try the tiny test model: PONYBOT_MODEL__SOURCE=tiny make run "
        f"(or PONYBOT_MODEL__SOURCE=tiny {ponybot_command()} up)"
    )


def _load_single_file(path: Path, config: Path | None, common: dict[str, Any]) -> Any:
    from diffusers import StableDiffusionPipeline

    if not path.is_file():
        raise ModelLoadError(f"checkpoint {path} does not exist")
    if config is None or not (config / "model_index.json").is_file():
        raise ModelLoadError(
            f"{path.name} is a single-file checkpoint: set model.config_dir (models.NAME.config_dir) to a local "
            "diffusers folder of the same architecture (model_index.json, component configs, tokenizer) "
            "so it loads offline"
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


#: torch.compile modes that replay CUDA graphs.
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def compile_mode(settings: WorkerSettings, device: torch.device) -> str | None:
    """The torch.compile mode for this worker, or None to run eagerly (always on the CPU).

    ``worker.cuda_graphs`` (on by default) compiles on CUDA even when ``worker.compile`` is off, in
    the mode of ``worker.compile_mode`` that also captures CUDA graphs (``reduce-overhead``, or
    ``max-autotune`` for ``max-autotune-no-cudagraphs``). Without it, ``worker.compile`` uses
    ``compile_mode`` as it is.
    """
    if device.type != "cuda" or not (settings.compile or settings.cuda_graphs):
        return None
    if not settings.cuda_graphs:
        return settings.compile_mode
    return {"max-autotune-no-cudagraphs": "max-autotune", "default": "reduce-overhead"}.get(
        settings.compile_mode, settings.compile_mode)


def compile_model(model: LoadedModel, cache_dir: Path, mode: str) -> None:
    """torch.compile the UNet and the VAE decoder, kernels cached on disk across restarts.

    Before compiling: inductor told to run 1x1 convolutions as matmuls and to tune its kernels' tiling
    (diffusers' guide to fast text-to-image inference). Each shape (size, batch size) compiles,
    and in a CUDA-graph mode captures its graphs, on first use: :func:`worker.startup.warm_up`
    runs them before the first job. ``speed: fast`` runs the UNet's modules eagerly (worker/deepcache.py).
    """
    configure_inductor(cache_dir)
    pipeline = model.pipeline
    pipeline.unet = torch.compile(pipeline.unet, mode=mode, fullgraph=True)
    pipeline.vae.decoder = torch.compile(pipeline.vae.decoder, mode=mode, fullgraph=True)


def configure_inductor(cache_dir: Path) -> None:
    """Kernels cached on disk under ``cache_dir``; 1x1 convolutions as matmuls, tiling tuned."""
    import torch._inductor.config as inductor

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str((cache_dir / "inductor").resolve()))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    inductor.conv_1x1_as_mm = True
    inductor.coordinate_descent_tuning = True
    inductor.epilogue_fusion = False
    inductor.coordinate_descent_check_all_directions = True
