"""Write a diffusers SD1.x pipeline as the single ``.safetensors`` file A1111 users download.

The original (LDM) key layout, written from the architecture's well-known correspondence,
so the tests can load a single-file checkpoint offline the way an operator does. Loading
it back through diffusers' own converter and getting the same pixels checks both ways.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(key: str, table: dict[str, str]) -> str:
    for new, old in table.items():
        if key.startswith(new + "."):
            return old + key[len(new):]
    return key


def _unet_block(blocks: str, block: int, kind: str, rest: str) -> str:
    """A resnet (slot 0, renamed) or a transformer (slot 1, same names) inside LDM's numbered blocks."""
    return f"{blocks}.{block}.0.{_rename(rest, RESNET)}" if kind == "resnets" else f"{blocks}.{block}.1.{rest}"


def unet_key(key: str, layers: int, attention_levels: set[int]) -> str:
    """One diffusers UNet key as LDM's ``model.diffusion_model.*`` names it."""
    per_level = layers + 1
    simple = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
              "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
    if (renamed := _rename(key, simple)) != key:
        return renamed
    if match := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        return _unet_block("input_blocks", 1 + int(match[1]) * per_level + int(match[3]), match[2], match[4])
    if match := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(match[1]) + 1) * per_level}.0.op.{match[2]}"
    if match := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key):
        kind, index, rest = match[1], int(match[2]), match[3]
        return f"middle_block.{2 * index}.{_rename(rest, RESNET)}" if kind == "resnets" else f"middle_block.1.{rest}"
    if match := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        return _unet_block("output_blocks", int(match[1]) * per_level + int(match[3]), match[2], match[4])
    if match := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        level = int(match[1])
        slot = 2 if level in attention_levels else 1
        return f"output_blocks.{level * per_level + layers}.{slot}.conv.{match[2]}"
    raise KeyError(f"no LDM name for UNet key {key}")


def vae_key(key: str, levels: int) -> str:
    """One diffusers VAE key as LDM's ``first_stage_model.*`` names it."""
    key = re.sub(r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out.", key)
    key = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", key)
    if match := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
        return f"{match[1]}.mid.attn_1.{_rename(match[2], VAE_ATTENTION)}"
    if match := re.match(r"encoder\.down_blocks\.(\d+)\.(resnets\.(\d+)|downsamplers\.0)\.(.*)", key):
        inner = f"block.{match[3]}" if match[3] is not None else "downsample"
        return f"encoder.down.{match[1]}.{inner}.{match[4].replace('conv_shortcut', 'nin_shortcut')}"
    if match := re.match(r"decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.*)", key):
        inner = f"block.{match[3]}" if match[3] is not None else "upsample"
        level = levels - 1 - int(match[1])
        return f"decoder.up.{level}.{inner}.{match[4].replace('conv_shortcut', 'nin_shortcut')}"
    return key


def save_single_file(pipeline: Any, path: Path) -> Path:
    """The pipeline's UNet, VAE and text encoder in one LDM-layout ``.safetensors``."""
    unet_config = pipeline.unet.config
    attention_levels = {i for i, kind in enumerate(unet_config.up_block_types) if "CrossAttn" in kind}
    tensors: dict[str, torch.Tensor] = {}
    for key, value in pipeline.unet.state_dict().items():
        tensors["model.diffusion_model." + unet_key(key, unet_config.layers_per_block, attention_levels)] = value
    levels = len(pipeline.vae.config.block_out_channels)
    for key, value in pipeline.vae.state_dict().items():
        name = vae_key(key, levels)
        if ".mid.attn_1." in name and name.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        tensors["first_stage_model." + name] = value
    for key, value in pipeline.text_encoder.state_dict().items():
        name = key if key.startswith("text_model.") else "text_model." + key  # transformers 5 dropped it
        tensors["cond_stage_model.transformer." + name] = value
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path))
    return path
