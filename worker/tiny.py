"""The ``tiny`` model: a random-weight pipeline shaped like SD1.5, for smoke tests and CI.

It has SD1.5's structure (CLIP text encoder, cross-attention UNet, KL VAE,
the model card's scheduler) at a width that builds in about a second and
generates 64x64 in well under a second on a CPU. Weights are seeded, so every
machine builds the same model.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

TINY_SOURCE = "tiny"
#: The tiny model's inpainting twin: the same pipeline with a 9-channel UNet (latents, mask, masked picture).
TINY_INPAINT_SOURCE = "tiny-inpaint"
TINY_REVISION = "v2"
#: The model card's scheduler (DDIM on SD1.5's betas); also the tiny model's stored config.
SD15_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's byte-level alphabet (the same table CLIP's BPE uses)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(code) for code in codes), strict=True))


def write_tokenizer(folder: Path) -> int:
    """A CLIP BPE tokenizer over single characters (plus a few merges); returns the vocab size."""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    merges = [("p", "o"), ("n", "y</w>"), ("po", "ny</w>"), ("c", "a"), ("ca", "t</w>")]
    tokens = alphabet + [f"{char}</w>" for char in alphabet] + ["".join(pair) for pair in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(pair) for pair in merges) + "\n")
    config = {
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "tokenizer_class": "CLIPTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return len(vocab)


def build_tiny_pipeline(folder: Path, seed: int = 0, in_channels: int = 4) -> None:
    """Write a tiny SD1.5-shaped pipeline in diffusers layout to ``folder``."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        vocab_size = write_tokenizer(Path(scratch))
        tokenizer = CLIPTokenizer.from_pretrained(scratch)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(  # four blocks: SD1.5's 8x latent downscale
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=5,
            vocab_size=vocab_size,
            max_position_embeddings=77,
        )
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)


def ensure_tiny_pipeline(cache_dir: Path, *, inpaint: bool = False) -> Path:
    """The tiny pipeline's folder under ``cache_dir``, built there once (``inpaint``: its 9-channel twin)."""
    folder = cache_dir / f"{TINY_INPAINT_SOURCE if inpaint else TINY_SOURCE}-{TINY_REVISION}"
    if (folder / "model_index.json").is_file():
        return folder
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("building the tiny random-weight pipeline in %s", folder)
    scratch = Path(tempfile.mkdtemp(prefix="tiny-", dir=cache_dir))
    try:
        build_tiny_pipeline(scratch, in_channels=9 if inpaint else 4)
        try:
            scratch.rename(folder)
        except OSError:  # another process built it at the same time
            if not (folder / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder
