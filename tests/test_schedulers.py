"""The samplers' bookkeeping: DDIM steps on host-side timesteps, never reading the device."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from diffusers import DDIMScheduler
from torch.utils._python_dispatch import TorchDispatchMode

from ponybot.schemas import GenerationRequest, Sampler
from worker.generate import BatchItem
from worker.schedulers import CARD_DDIM, HostStepDDIM

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


def test_ddim_denoising_reads_nothing_back_per_step(generator: Any) -> None:
    reads = {}
    for sampler in (Sampler.DDIM, Sampler.DPMPP_2M_KARRAS):
        for steps in (2, 6):
            request = GenerationRequest(prompt="pony", width=256, height=256, steps=steps, sampler=sampler)
            with CountHostReads() as counter:
                generator.generate_batch(request, [BatchItem("pony", "", 1, 1)])
            reads[sampler, steps] = counter.reads
    assert reads[Sampler.DDIM, 2] == reads[Sampler.DDIM, 6] == 0
    # DPM-Solver++ finds its first step once per image; no more after that
    assert reads[Sampler.DPMPP_2M_KARRAS, 2] == reads[Sampler.DPMPP_2M_KARRAS, 6] <= 1
