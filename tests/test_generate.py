"""The worker's generation against plain diffusers, and the CLI's reproducibility."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ponybot.parameters import format_parameters, parse_parameters
from ponybot.schemas import GenerationRequest, Sampler
from tests.conftest import cli_env, run_cli
from tests.ldm_checkpoint import save_single_file
from worker.png import read_parameters
from worker.schedulers import CARD_DDIM
from worker.tiny import TINY_REVISION


def test_same_pixels_as_plain_diffusers(generator: Any, model_cache: Path) -> None:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    folder = model_cache / f"tiny-{TINY_REVISION}"
    plain = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    plain.scheduler = DDIMScheduler.from_config(plain.scheduler.config, **CARD_DDIM)
    plain.set_progress_bar_config(disable=True)
    prompt, negative, seed = "pinkie pie in a meadow", "blurry, lowres", 1234
    expected = plain(
        prompt, negative_prompt=negative, num_inference_steps=6, guidance_scale=7.5, width=256, height=256,
        generator=torch.Generator("cpu").manual_seed(seed), output_type="np",
    ).images[0]

    request = GenerationRequest(prompt=prompt, negative_prompt=negative, steps=6, width=256, height=256,
                                clip_skip=1, sampler=Sampler.DDIM, seed=seed)
    ours = generator.generate(request, seed=seed, prompt=prompt, negative_prompt=negative).images[0]
    ours_array = np.asarray(ours, dtype=np.float32) / 255
    assert np.abs(ours_array - expected).max() <= 1 / 255 + 1e-6


def test_every_sampler_runs_and_seeds_differ(generator: Any) -> None:
    for sampler in Sampler:
        request = GenerationRequest(prompt="pony", steps=3, width=256, height=256, count=2, sampler=sampler)
        out = generator.generate(request, seed=5, prompt="pony", negative_prompt="")
        assert out.seeds == [5, 6]
        first, second = (np.asarray(image) for image in out.images)
        assert first.shape == (256, 256, 3)
        assert not np.array_equal(first, second), sampler


def test_cli_local_is_byte_identical_and_seed_sensitive(tmp_path: Path, model_cache: Path, redis_url: str) -> None:
    args = ["generate", "pinkie pie", "--model", "tiny", "--local", "--size", "256x256", "--steps", "4"]
    # once with the test Redis, once with no Redis configured (an embedded one is started)
    first = run_cli([*args, "--seed", "42", "--out", "a"], cli_env(redis_url, model_cache), tmp_path)
    second = run_cli([*args, "--seed", "42", "--out", "b"], cli_env(None, model_cache), tmp_path)
    third = run_cli([*args, "--seed", "43", "--out", "c"], cli_env(redis_url, model_cache), tmp_path)
    for result in (first, second, third):
        assert result.returncode == 0, result.stderr
    paths = [Path(tmp_path / line.split("\t")[0]) for line in (first.stdout, second.stdout, third.stdout)]
    assert [line.split("\t")[1].strip() for line in (first.stdout, third.stdout)] == ["seed=42", "seed=43"]
    a, b, c = (path.read_bytes() for path in paths)
    assert a == b
    assert np.asarray(Image.open(io.BytesIO(a))).tolist() != np.asarray(Image.open(io.BytesIO(c))).tolist()
    parameters = parse_parameters(read_parameters(a) or "")
    assert parameters["prompt"] == "derpibooru_p_95, pinkie pie"  # quality tags on, as /generate has them
    assert "derpibooru_p_low" in parameters["negative_prompt"]
    assert parameters["Seed"] == "42"
    assert parameters["Model"] == "tiny"
    plain = run_cli([*args, "--seed", "42", "--steps", "1", "--no-quality", "--out", "d"],
                    cli_env(redis_url, model_cache), tmp_path)
    assert plain.returncode == 0, plain.stderr
    without = parse_parameters(read_parameters((tmp_path / plain.stdout.split("\t")[0]).read_bytes()) or "")
    assert without["prompt"] == "pinkie pie" and "derpibooru_p_low" not in without["negative_prompt"]


def test_single_file_checkpoint_as_a1111_users_have_it(tmp_path: Path, model_cache: Path, redis_url: str) -> None:
    """An operator points model.source at one .safetensors (LDM layout) and model.config_dir at the
    architecture's configs: it loads offline and draws what the diffusers folder draws."""
    from diffusers import StableDiffusionPipeline

    folder = model_cache / f"tiny-{TINY_REVISION}"
    pipeline = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    checkpoint = save_single_file(pipeline, tmp_path / "pony-v4-pruned.safetensors")
    args = ["generate", "pinkie pie", "--local", "--size", "256x256", "--steps", "3", "--seed", "5"]
    env = cli_env(redis_url, model_cache, PONYBOT_MODEL__CONFIG_DIR=str(folder))
    single = run_cli([*args, "--model", str(checkpoint), "--out", "single"], env, tmp_path)
    reference = run_cli([*args, "--model", str(folder), "--out", "folder"], env, tmp_path)
    for result in (single, reference):
        assert result.returncode == 0, result.stderr
    single_png, folder_png = (Path(tmp_path / r.stdout.split("\t")[0]).read_bytes() for r in (single, reference))
    assert np.asarray(Image.open(io.BytesIO(single_png))).tolist() == \
        np.asarray(Image.open(io.BytesIO(folder_png))).tolist()
    parameters = parse_parameters(read_parameters(single_png) or "")
    assert parameters["Model"] == "pony-v4-pruned"
    # A1111's short model hash: the first 10 hex digits of the checkpoint file's sha256
    assert parameters["Model hash"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:10]
    assert "Model hash" not in parse_parameters(read_parameters(folder_png) or "")


def test_nan_pixels_fail_that_job_only(settings: Any, conn: Any, generator: Any) -> None:
    """A decoder that yields NaN: that job fails with a clear message and a metric; its neighbour is posted."""
    from prometheus_client import CollectorRegistry

    from ponybot import keys
    from ponybot.schemas import Job, build_request
    from worker.runtime import WorkerRuntime

    registry = CollectorRegistry()
    runtime = WorkerRuntime(settings, conn, generator, "nan-test", None, registry)
    broken, fine = (Job.create(build_request(settings.limits, prompt=p, seed=7, steps=2, width=256, height=256))
                    for p in ("pony", "another pony"))
    calls: list[int] = []

    def first_slice_nan(_module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        calls.append(1)  # whole batch or one image per call: the first image is the broken job's
        if len(calls) > 1:
            return output
        output = output.clone()
        output[0] = float("nan")
        return output

    hook = generator.pipeline.vae.decoder.register_forward_hook(first_slice_nan)
    try:
        events = {event.job.id: event for event in runtime.run_batch([broken, fine])}
    finally:
        hook.remove()
    assert calls
    failed = events[broken.id]
    assert failed.kind == "failed" and failed.error_code == "non_finite"
    assert "NaN" in (failed.error_message or "") and "seed 7" in (failed.error_message or "")
    assert conn.get(keys.image(broken.id, 0)) is None  # no black square stored
    assert events[fine.id].kind == "done" and conn.get(keys.image(fine.id, 0))
    assert registry.get_sample_value("ponybot_failures_total",
                                     {"model": settings.default_model, "cause": "non_finite"}) == 1


def test_seeds_wrap_at_2_32(generator: Any) -> None:
    """Image i's seed is (seed + i) mod 2**32, and that seed alone draws the same image."""
    from ponybot.schemas import MAX_SEED, Job

    request = GenerationRequest(prompt="pony", steps=2, width=256, height=256, count=2, seed=MAX_SEED)
    job = Job.create(request)
    assert [job.image_seed(i) for i in range(2)] == [MAX_SEED, 0]
    out = generator.generate(request, seed=MAX_SEED, prompt="pony", negative_prompt="")
    assert out.seeds == [MAX_SEED, 0]
    alone = generator.generate(request.model_copy(update={"count": 1, "seed": 0}), seed=0, prompt="pony",
                               negative_prompt="")
    # the same starting noise (batched kernels may round a level differently); seed 2**32 would differ wholly
    difference = np.abs(np.asarray(out.images[1], np.int16) - np.asarray(alone.images[0], np.int16))
    assert difference.max() <= 2
    assert parse_parameters(format_parameters(job, 1, "pony", "", "tiny"))["Seed"] == "0"
