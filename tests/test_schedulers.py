"""The samplers' bookkeeping: DDIM steps on host-side timesteps, never reading the device."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler
from torch.utils._python_dispatch import TorchDispatchMode

from ponybot.schemas import GenerationRequest, Sampler
from worker.generate import BatchItem
from worker.schedulers import CARD_DDIM, HostDPMSolver, HostEulerAncestral, HostStepDDIM

#: A tensor's value read back by the host: on a GPU, each one waits for all queued work.
HOST_READS = (torch.ops.aten.item.default, torch.ops.aten._local_scalar_dense.default)


class CountHostReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.reads += func in HOST_READS
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("begin", [0, 4])  # 0: txt2img; 4: img2img at strength 0.6 starts part way
def test_host_step_ddim_matches_diffusers(begin: int) -> None:
    stock, ours = DDIMScheduler(**CARD_DDIM), HostStepDDIM(**CARD_DDIM)
    stock.set_timesteps(10)
    ours.set_timesteps(10)
    ours.set_begin_index(begin)  # as diffusers' img2img does where a scheduler has it (stock DDIM has not)
    assert torch.equal(stock.timesteps, ours.timesteps)
    noise = torch.Generator().manual_seed(3)
    a = b = torch.randn(1, 4, 8, 8, generator=noise)
    for t in stock.timesteps[begin:]:
        model_output = torch.randn(1, 4, 8, 8, generator=noise)
        a = stock.step(model_output, t, a).prev_sample
        b = ours.step(model_output, t, b).prev_sample
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("begin", [None, 3])  # None: txt2img; 3: img2img starting part way
@pytest.mark.parametrize(("stock_class", "ours_class", "options"), [
    (EulerAncestralDiscreteScheduler, HostEulerAncestral, {}),
    (DPMSolverMultistepScheduler, HostDPMSolver,
     {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
])
def test_euler_a_and_dpm_match_diffusers(stock_class: Any, ours_class: Any, options: dict[str, Any],
                                         begin: int | None, dtype: torch.dtype) -> None:
    betas = {key: CARD_DDIM[key] for key in ("beta_start", "beta_end", "beta_schedule")}
    stock, ours = stock_class(**betas, **options), ours_class(**betas, **options)
    for scheduler in (stock, ours):
        scheduler.set_timesteps(8)
        if begin is not None:
            scheduler.set_begin_index(begin)
    inputs = torch.Generator().manual_seed(5)
    a = b = torch.randn(2, 4, 8, 8, generator=inputs).to(dtype)
    noise_a = [torch.Generator().manual_seed(seed) for seed in (11, 12)]  # per image, as generate() passes them
    noise_b = [torch.Generator().manual_seed(seed) for seed in (11, 12)]
    for t in stock.timesteps[begin or 0:]:
        model_output = torch.randn(2, 4, 8, 8, generator=inputs).to(dtype)
        a = stock.step(model_output, t, stock.scale_model_input(a, t), generator=noise_a).prev_sample
        b = ours.step(model_output, t, ours.scale_model_input(b, t), generator=noise_b).prev_sample
        assert torch.equal(a, b)


def test_denoising_reads_nothing_back_from_the_device(generator: Any) -> None:
    """A host read on a GPU waits for all queued work: none in any sampler's loop (diffusers' DDIM does
    four a step; its Euler a and DPM-Solver one an image)."""
    reads = {}
    for sampler in Sampler:
        for steps in (2, 6):
            request = GenerationRequest(prompt="pony", width=256, height=256, steps=steps, sampler=sampler)
            with CountHostReads() as counter:
                generator.generate_batch(request, [BatchItem("pony", "", 1, 1)])
            reads[sampler, steps] = counter.reads
    assert set(reads.values()) == {0}, reads
