"""The three samplers members can pick, built from the model's own scheduler config."""

from __future__ import annotations

from typing import Any

from ponybot.schemas import Sampler

#: The model card's DDIM settings.
CARD_DDIM = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
}


def make_scheduler(sampler: Sampler, base_config: Any) -> Any:
    """A fresh scheduler for one run (schedulers keep per-run state)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler

    if sampler is Sampler.DDIM:
        return DDIMScheduler.from_config(base_config, **CARD_DDIM)
    if sampler is Sampler.EULER_A:
        return EulerAncestralDiscreteScheduler.from_config(base_config)
    if sampler is Sampler.DPMPP_2M_KARRAS:
        return DPMSolverMultistepScheduler.from_config(
            base_config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True
        )
    raise ValueError(f"unknown sampler {sampler!r}")
