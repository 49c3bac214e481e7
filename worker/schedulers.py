"""The three samplers members can pick, built from the model's own scheduler config.

Each is diffusers' scheduler with its bookkeeping kept on the host, so a denoising step
never waits for the GPU: the same numbers as diffusers' own (tests/test_schedulers.py).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler
from diffusers.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from ponybot.schemas import Sampler

#: The model card's DDIM settings.
CARD_DDIM = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
}


class HostStepDDIM(DDIMScheduler):  # type: ignore[misc, unused-ignore]
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


class KnownStart:
    """Start at the first timestep unless told otherwise (img2img calls ``set_begin_index``).

    Without a begin index, diffusers finds the first step by comparing the device timestep
    with its schedule: a device-to-host read per image.
    """

    _begin_index: int | None

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        super().set_timesteps(*args, **kwargs)  # type: ignore[misc, unused-ignore]
        self._begin_index = 0


class HostDPMSolver(KnownStart, DPMSolverMultistepScheduler):  # type: ignore[misc, unused-ignore]
    """DPM-Solver++ (2M Karras here), starting without a search for its first step."""


class HostEulerAncestral(KnownStart, EulerAncestralDiscreteScheduler):  # type: ignore[misc, unused-ignore]
    """Euler a whose per-step noise reaches the GPU without waiting for it.

    Each step's noise comes from the CPU generators (so a seed starts from the same noise on every
    device); diffusers copies it from pageable memory, which waits for the GPU to drain. Here
    the same numbers go through pinned memory with an asynchronous copy. The step is
    diffusers' (epsilon or v prediction), with that one change.
    """

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor,
             generator: torch.Generator | list[torch.Generator] | None = None, return_dict: bool = True) -> Any:
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma, sigma_to = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
        sample = sample.to(torch.float32)
        if self.config.prediction_type == "epsilon":
            predicted = sample - sigma * model_output
        elif self.config.prediction_type == "v_prediction":
            predicted = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))
        else:
            raise ValueError(f"prediction_type {self.config.prediction_type!r} is not supported by Euler a")
        sigma_up = (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        derivative = (sample - predicted) / sigma
        previous = sample + derivative * (sigma_down - sigma)
        previous = previous + step_noise(model_output, generator) * sigma_up
        previous = previous.to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return (previous, predicted)
        return EulerAncestralDiscreteSchedulerOutput(prev_sample=previous, pred_original_sample=predicted)


def step_noise(like: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
    """diffusers' ``randn_tensor`` numbers for ``like``; from CPU generators to a GPU without a sync."""
    generators = generator if isinstance(generator, list) else [generator]
    on_host = like.device.type == "cuda" and all(g is not None and g.device.type == "cpu" for g in generators)
    noise: torch.Tensor = randn_tensor(like.shape, generator=generator,
                                       device=torch.device("cpu") if on_host else like.device, dtype=like.dtype)
    return noise.pin_memory().to(like.device, non_blocking=True) if on_host else noise


def make_scheduler(sampler: Sampler, base_config: Any) -> Any:
    """A fresh scheduler for one run (schedulers keep per-run state)."""
    if sampler is Sampler.DDIM:
        return HostStepDDIM.from_config(base_config, **CARD_DDIM)
    if sampler is Sampler.EULER_A:
        return HostEulerAncestral.from_config(base_config)
    if sampler is Sampler.DPMPP_2M_KARRAS:
        return HostDPMSolver.from_config(base_config, algorithm_type="dpmsolver++", solver_order=2,
                                         use_karras_sigmas=True)
    raise ValueError(f"unknown sampler {sampler!r}")
