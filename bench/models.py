"""The pipelines bench/gpu.py compares: SD1.5's architecture with random weights, or the tiny model."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from worker.tiny import SD15_SCHEDULER, build_tiny_pipeline, write_tokenizer


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
