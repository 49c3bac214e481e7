"""``speed: fast``: DeepCache-style reuse of the UNet's deep features, written for diffusers' UNet2DConditionModel.

DeepCache (Ma, Fang and Wang, CVPR 2024) observes that the deep features of a diffusion UNet
change little from one step to the next, while its shallowest blocks are cheap. Every
``interval`` steps the whole UNet runs and the input of its last up block (everything below the
shallowest skip branch) is kept; the steps in between run only ``conv_in``, the first down block
and the last up block, on the kept features. The first step always runs in full.

This is our own implementation (the ``DeepCache`` package pins older diffusers): the same
arithmetic as ``UNet2DConditionModel.forward`` for SD1.5-style UNets (no class or added
embeddings, no ControlNet/adapter residuals), which :func:`deep_cache` checks before it
takes over. It runs the UNet's modules eagerly: a compiled UNet (and its CUDA graphs) is
bypassed in fast mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput


class DeepCache:
    """One generation's feature cache: call count and the kept deep features."""

    def __init__(self, unet: Any, interval: int) -> None:
        self.unet = unet
        self.interval = interval
        self.calls = 0
        self.features: torch.Tensor | None = None
        self.full_calls = 0

    def forward(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor, *_args: Any,
                timestep_cond: Any = None, attention_mask: Any = None, cross_attention_kwargs: Any = None,
                added_cond_kwargs: Any = None, return_dict: bool = True, **unsupported: Any) -> Any:
        if timestep_cond is not None or attention_mask is not None or added_cond_kwargs or any(
                value is not None for value in unsupported.values()):
            raise ValueError("speed fast supports SD1.5-style UNets only (no extra conditioning)")
        unet = self.unet
        full = self.features is None or self.calls % self.interval == 0
        self.calls += 1
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        context = unet.process_encoder_hidden_states(encoder_hidden_states=encoder_hidden_states,
                                                     added_cond_kwargs=None)
        kwargs = {"cross_attention_kwargs": cross_attention_kwargs}
        uneven = any(dim % 2**unet.num_upsamplers for dim in sample.shape[-2:])  # as diffusers decides
        sample = unet.conv_in(sample)
        residuals: tuple[torch.Tensor, ...] = (sample,)
        blocks = unet.down_blocks if full else unet.down_blocks[:1]
        for block in blocks:
            if getattr(block, "has_cross_attention", False):
                sample, res = block(hidden_states=sample, temb=emb, encoder_hidden_states=context, **kwargs)
            else:
                sample, res = block(hidden_states=sample, temb=emb)
            residuals += res
        last = unet.up_blocks[-1]
        if full:
            sample = self._deep(sample, emb, context, residuals, uneven, kwargs)
            self.features = sample
            self.full_calls += 1
        assert self.features is not None
        sample = self._up(last, self.features, emb, context, residuals[: len(last.resnets)], None, kwargs)
        if unet.conv_norm_out:
            sample = unet.conv_act(unet.conv_norm_out(sample))
        sample = unet.conv_out(sample)
        return UNet2DConditionOutput(sample=sample) if return_dict else (sample,)

    def _deep(self, sample: torch.Tensor, emb: torch.Tensor, context: torch.Tensor,
              residuals: tuple[torch.Tensor, ...], uneven: bool, kwargs: dict[str, Any]) -> torch.Tensor:
        """The mid block and every up block but the last: the features the cached steps reuse."""
        unet = self.unet
        if unet.mid_block is not None:
            if getattr(unet.mid_block, "has_cross_attention", False):
                sample = unet.mid_block(sample, emb, encoder_hidden_states=context, **kwargs)
            else:
                sample = unet.mid_block(sample, emb)
        for block in unet.up_blocks[:-1]:
            mine, residuals = residuals[-len(block.resnets):], residuals[: -len(block.resnets)]
            size = residuals[-1].shape[2:] if uneven else None  # what is left: the last block's skips
            sample = self._up(block, sample, emb, context, mine, size, kwargs)
        return sample

    @staticmethod
    def _up(block: Any, sample: torch.Tensor, emb: torch.Tensor, context: torch.Tensor,
            residuals: tuple[torch.Tensor, ...], size: Any, kwargs: dict[str, Any]) -> torch.Tensor:
        if getattr(block, "has_cross_attention", False):
            out: torch.Tensor = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=residuals,
                                      encoder_hidden_states=context, upsample_size=size, **kwargs)
        else:
            out = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=residuals, upsample_size=size)
        return out


def check_supported(unet: Any) -> None:
    """ValueError unless ``unet`` is the kind of UNet :class:`DeepCache` reproduces."""
    config = unet.config
    extras = (config.class_embed_type, config.addition_embed_type, config.time_cond_proj_dim,
              config.encoder_hid_dim_type, getattr(unet, "position_net", None))
    if any(extra is not None for extra in extras) or config.center_input_sample:
        raise ValueError("speed fast supports SD1.5-style UNets only (no class, added or hint embeddings)")
    first_down = 1 + len(unet.down_blocks[0].resnets) + (1 if unet.down_blocks[0].downsamplers else 0)
    if len(unet.up_blocks[-1].resnets) > first_down:
        raise ValueError("speed fast: the last up block needs skips from deeper than the first down block")


@contextmanager
def deep_cache(unet: Any, interval: int) -> Iterator[DeepCache | None]:
    """While open, calls to ``unet`` go through a fresh :class:`DeepCache` (``interval`` 0: untouched)."""
    if not interval:
        yield None
        return
    base = getattr(unet, "_orig_mod", unet)  # a compiled UNet: its eager modules
    check_supported(base)
    cache = DeepCache(base, interval)
    had = "forward" in unet.__dict__
    saved = unet.__dict__.get("forward")
    unet.__dict__["forward"] = cache.forward
    try:
        yield cache
    finally:
        if had:
            unet.__dict__["forward"] = saved
        else:
            del unet.__dict__["forward"]
