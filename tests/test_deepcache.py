"""speed fast: DeepCache-style feature reuse on diffusers' UNet, chosen per job, recorded in the PNG."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import redis
import torch

from ponybot import keys
from ponybot.errors import InvalidRequestError
from ponybot.parameters import parse_parameters
from ponybot.queue import enqueue
from ponybot.schemas import GenerationRequest, Job, JobEvent, Speed, build_request
from ponybot.settings import Settings
from worker.deepcache import DeepCache, deep_cache
from worker.png import read_parameters
from worker.runner import GenerationWorker
from worker.runtime import WorkerRuntime


def unet_inputs(generator: Any) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
    unet = generator.pipeline.unet
    torch.manual_seed(0)
    sample = torch.randn(2, 4, 32, 32)
    context = torch.randn(2, 77, unet.config.cross_attention_dim)
    return unet, sample, torch.tensor(500), context


def test_a_full_step_is_diffusers_own_forward(generator: Any) -> None:
    unet, sample, timestep, context = unet_inputs(generator)
    with torch.inference_mode():
        expected = unet(sample, timestep, encoder_hidden_states=context, return_dict=False)[0]
        ours = DeepCache(unet, interval=1).forward(sample, timestep, context, return_dict=False)[0]
    assert torch.allclose(ours, expected, atol=1e-5, rtol=0)


def test_cached_steps_reuse_the_deep_features(generator: Any) -> None:
    unet, sample, timestep, context = unet_inputs(generator)
    with torch.inference_mode(), deep_cache(unet, 3) as cache:
        assert cache is not None
        outputs = [unet(sample + 0.01 * i, timestep, encoder_hidden_states=context, return_dict=False)[0]
                   for i in range(7)]
        plain = unet.__class__.forward(unet, sample + 0.01, timestep, encoder_hidden_states=context,
                                       return_dict=False)[0]
    assert cache.full_calls == 3  # calls 0, 3 and 6
    assert "forward" not in unet.__dict__  # the UNet is itself again
    assert not torch.equal(outputs[1], plain)  # a cached call is an approximation
    assert (outputs[1] - plain).abs().mean() < 0.5 * plain.abs().mean()  # and a close one


def test_fast_images_are_close_to_normal_ones(generator: Any) -> None:
    shape = {"prompt": "pinkie pie", "steps": 6, "width": 256, "height": 256, "seed": 3}
    normal = generator.generate(GenerationRequest(**shape), seed=3, prompt="pinkie pie", negative_prompt="")
    fast = generator.generate(GenerationRequest(**shape, speed=Speed.FAST), seed=3, prompt="pinkie pie",
                              negative_prompt="")
    a, b = (np.asarray(out.images[0], dtype=np.float32) for out in (normal, fast))
    assert not np.array_equal(a, b)
    assert np.abs(a - b).mean() < 40  # of 255: the same picture, some detail lost (bench/deepcache.py measures it)


def test_fast_jobs_are_recorded_and_not_batched_with_normal_ones(conn: redis.Redis, settings: Settings,
                                                                 runtime: WorkerRuntime) -> None:
    runtime.settings = settings.model_copy(update={"worker": settings.worker.model_copy(
        update={"max_batch": 4, "batch_window_ms": 0})})
    jobs = [Job.create(build_request(settings.limits, prompt="pony", steps=3, width=256, height=256, seed=1,
                                     speed=speed)) for speed in (Speed.FAST, Speed.NORMAL, Speed.FAST)]
    for job in jobs:
        enqueue(conn, job, max_queue=10, job_timeout_s=120, result_ttl_s=600)
    GenerationWorker(runtime).work(burst=True)
    events = {e.job.id: e for e in (JobEvent.model_validate_json(f[b"data"])
                                   for _id, f in conn.xrange(keys.EVENTS_STREAM))}
    assert events[jobs[0].id].generation_s == events[jobs[2].id].generation_s  # the two fast ones: one batch
    assert events[jobs[1].id].generation_s != events[jobs[0].id].generation_s
    for job in jobs:
        key = events[job.id].images[0].key
        assert key is not None
        parameters = parse_parameters(read_parameters(conn.get(key) or b"") or "")
        expected = "fast (DeepCache interval 3)" if job.request.speed is Speed.FAST else None
        assert parameters.get("Speed") == expected


def test_an_unknown_speed_is_refused_by_name(settings: Settings) -> None:
    with pytest.raises(InvalidRequestError, match="speed"):
        build_request(settings.limits, prompt="pony", speed="turbo")
