"""The three samplers members can pick, built from the model's own scheduler config."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler

from ponybot.schemas import Sampler

#: The model card's DDIM settings.
CARD_DDIM = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
}


class HostStepDDIM(DDIMScheduler):  # type: ignore[misc]
    """DDIM that steps on host-side timesteps: the same arithmetic, no GPU sync per step.

    Diffusers' DDIM indexes its CPU ``alphas_cumprod`` with the device timestep the pipeline
    hands it and tests ``prev_timestep >= 0`` on it: four device-to-host reads per step, each
    waiting for the GPU to drain. This one keeps the timesteps as Python ints too and takes the
    next one at each step (from ``begin_index`` on, as img2img starts), so the denoising loop
    keeps queueing work while the GPU runs.
    """

    timesteps: torch.Tensor
    host_timesteps: list[int]
    host_index: int

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        super().set_timesteps(num_inference_steps)  # on the host first
        self.host_timesteps = self.timesteps.tolist()
        self.host_index = 0
        self.timesteps = self.timesteps.to(device)

    def set_begin_index(self, begin_index: int = 0) -> None:
        self.host_index = begin_index

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, *args: Any,
             **kwargs: Any) -> Any:
        if isinstance(timestep, torch.Tensor) and self.host_index < len(self.host_timesteps):
            timestep = self.host_timesteps[self.host_index]
        self.host_index += 1
        return super().step(model_output, timestep, sample, *args, **kwargs)


def make_scheduler(sampler: Sampler, base_config: Any) -> Any:
    """A fresh scheduler for one run (schedulers keep per-run state)."""
    if sampler is Sampler.DDIM:
        return HostStepDDIM.from_config(base_config, **CARD_DDIM)
    if sampler is Sampler.EULER_A:
        return EulerAncestralDiscreteScheduler.from_config(base_config)
    if sampler is Sampler.DPMPP_2M_KARRAS:
        return DPMSolverMultistepScheduler.from_config(
            base_config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True
        )
    raise ValueError(f"unknown sampler {sampler!r}")
