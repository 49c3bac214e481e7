"""``generate()``: one job's images from the resident pipeline, in numbered steps."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ponybot.errors import GenerationError
from ponybot.schemas import GenerationRequest, image_seed
from worker.encoding import PromptEncoder
from worker.loading import LoadedModel
from worker.schedulers import make_scheduler

log = logging.getLogger(__name__)

#: Called after each denoising step with (step, total, latents).
StepCallback = Callable[[int, int, torch.Tensor], None]


@dataclass(frozen=True)
class BatchItem:
    """One job's part of a batch."""

    prompt: str
    negative_prompt: str
    seed: int
    count: int


@dataclass
class GenerationOutput:
    """The images of one job, their seeds, and the image classifier's NSFW flags."""

    images: list[Image.Image]
    seeds: list[int]
    nsfw: list[bool | None] = field(default_factory=list)  #: None: the classifier could not tell
    seconds: float = 0.0
    tags: list[dict[str, float]] = field(default_factory=list)  #: the tags the image tagger read, per image
    #: set when the job's images are unusable (NaN or inf in the decoded pixels): the job fails with it
    error: GenerationError | None = None


#: The failure code (and metric label) of a job whose decoded images hold NaN or inf.
NON_FINITE = "non_finite"


def non_finite_error(seeds: list[int], bad: list[int]) -> GenerationError:
    """A clear failure for images that would have been black squares."""
    which = ", ".join(f"image {index} (seed {seeds[index]})" for index in bad)
    return GenerationError(
        NON_FINITE,
        f"the model produced invalid pixels (NaN/inf) for {which}; nothing was posted. "
        "Try another seed, a lower CFG scale or milder emphasis weights",
    )


class Generator:
    """Owns the resident pipeline and the project's prompt encoder."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.pipeline = model.pipeline
        self.encoder = PromptEncoder(self.pipeline.tokenizer, self.pipeline.text_encoder)
        self.base_scheduler_config = self.pipeline.scheduler.config
        self._img2img: Any = None

    @property
    def img2img(self) -> Any:
        """img2img over the same loaded modules: no second model in memory."""
        if self._img2img is None:
            from diffusers import StableDiffusionImg2ImgPipeline

            self._img2img = StableDiffusionImg2ImgPipeline(**self.pipeline.components, requires_safety_checker=False)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img

    def generate(
        self,
        request: GenerationRequest,
        *,
        seed: int,
        prompt: str,
        negative_prompt: str,
        on_step: StepCallback | None = None,
        init_image: Image.Image | None = None,
        strength: float = 1.0,
    ) -> GenerationOutput:
        """Images for ``request`` (txt2img), or from ``init_image`` at ``strength`` (img2img, its size)."""
        item = BatchItem(prompt, negative_prompt, seed, request.count)
        return self.generate_batch(request, [item], on_step=on_step, init_image=init_image, strength=strength)[0]

    def generate_batch(
        self,
        request: GenerationRequest,
        items: list[BatchItem],
        *,
        on_step: StepCallback | None = None,
        init_image: Image.Image | None = None,
        strength: float = 1.0,
    ) -> list[GenerationOutput]:
        """Several jobs of the same shape (size, steps, sampler, CFG, CLIP skip) as one batch.

        ``request`` gives the shape; each item its own prompts, seed and count. Every image keeps
        its own CPU generator (seed + i), so its starting noise is what it would be alone.
        """
        started = time.perf_counter()

        # 1. Check inputs: the contract validated them; the model adds its own constraint.
        factor = self.pipeline.vae_scale_factor * 8
        for name, value in (("width", request.width), ("height", request.height)):
            if value % factor:
                raise GenerationError("invalid_request", f"{name} must be a multiple of {factor} for this model")
        if init_image is not None and (not 0 < strength <= 1 or len(items) != 1):
            raise GenerationError("invalid_request", f"img2img takes one job and a strength in (0, 1], got {strength}")

        # 2. Encode prompts and negative prompts the same way (CLIP skip, chunks, emphasis), one length for all.
        chunked = [(self.encoder.chunks(i.prompt), self.encoder.chunks(i.negative_prompt)) for i in items]
        length = max(max(len(pos), len(neg)) for pos, neg in chunked)
        def embed(side: int) -> torch.Tensor:
            rows = [self.encoder.encode_chunks(pair[side], request.clip_skip, min_chunks=length).repeat(i.count, 1, 1)
                    for pair, i in zip(chunked, items, strict=True)]
            return torch.cat(rows).to(self.model.device, self.model.dtype)

        positive, negative = embed(0), embed(1)

        # 3. A fresh scheduler for the chosen sampler, on the pipeline this batch runs.
        pipeline = self.pipeline if init_image is None else self.img2img
        pipeline.scheduler = make_scheduler(request.sampler, self.base_scheduler_config)

        # 4. One CPU generator per image: image i of a job gets (seed + i) mod 2**32, the same on every device.
        seeds = [[image_seed(item.seed, index) for index in range(item.count)] for item in items]
        generators = [torch.Generator("cpu").manual_seed(seed) for job_seeds in seeds for seed in job_seeds]

        # 5. Denoise and decode (the VAE decodes in slices when batched, to bound its memory).
        def step_end(pipe: Any, step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if on_step is not None:
                on_step(step + 1, pipe.num_timesteps, tensors["latents"])
            return tensors

        size: dict[str, Any] = (
            {"width": request.width, "height": request.height} if init_image is None
            else {"image": init_image, "strength": strength}
        )
        if len(generators) > 1:
            pipeline.vae.enable_slicing()
        else:
            pipeline.vae.disable_slicing()
        with torch.inference_mode():
            result = pipeline(
                prompt_embeds=positive,
                negative_prompt_embeds=negative,
                num_inference_steps=request.steps,
                guidance_scale=request.cfg,
                num_images_per_prompt=1,
                generator=generators,
                callback_on_step_end=step_end,
                callback_on_step_end_tensor_inputs=["latents"],
                output_type="np",
                **size,
            )
        pixels: np.ndarray = result.images

        # 6. Back to one output per job; a job with NaN/inf pixels fails instead of posting black squares.
        seconds = time.perf_counter() - started
        finite = np.isfinite(pixels).reshape(len(pixels), -1).all(axis=1)
        outputs, offset = [], 0
        for job_seeds in seeds:
            mine = slice(offset, offset + len(job_seeds))
            bad = [index for index, ok in enumerate(finite[mine]) if not ok]
            if bad:
                log.error("generation produced NaN/inf pixels for seeds %s", [job_seeds[i] for i in bad])
                error = non_finite_error(job_seeds, bad)
                outputs.append(GenerationOutput([], job_seeds, [], seconds, error=error))
            else:
                images: list[Image.Image] = pipeline.numpy_to_pil(pixels[mine])
                outputs.append(GenerationOutput(images, job_seeds, [None] * len(images), seconds))
            offset += len(job_seeds)
        return outputs
