"""``generate()``: one job's images from the resident pipeline, in numbered steps."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from ponybot.errors import GenerationError
from ponybot.schemas import GenerationRequest
from worker.encoding import PromptEncoder
from worker.loading import LoadedModel
from worker.schedulers import make_scheduler

log = logging.getLogger(__name__)

#: Called after each denoising step with (step, total, latents).
StepCallback = Callable[[int, int, torch.Tensor], None]


@dataclass
class GenerationOutput:
    """The images of one job, their seeds, and the image classifier's NSFW flags."""

    images: list[Image.Image]
    seeds: list[int]
    nsfw: list[bool | None] = field(default_factory=list)  #: None: the classifier could not tell
    seconds: float = 0.0


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
        started = time.perf_counter()

        # 1. Check inputs: the contract validated them; the model adds its own constraint.
        factor = self.pipeline.vae_scale_factor * 8
        for name, value in (("width", request.width), ("height", request.height)):
            if value % factor:
                raise GenerationError("invalid_request", f"{name} must be a multiple of {factor} for this model")
        if init_image is not None and not 0 < strength <= 1:
            raise GenerationError("invalid_request", f"strength must be in (0, 1], got {strength}")

        # 2. Encode prompt and negative prompt the same way (CLIP skip, chunks, emphasis).
        positive, negative = self.encoder.encode_pair(prompt, negative_prompt, request.clip_skip)
        positive = positive.to(self.model.device, self.model.dtype)
        negative = negative.to(self.model.device, self.model.dtype)

        # 3. A fresh scheduler for the chosen sampler, on the pipeline this job runs.
        pipeline = self.pipeline if init_image is None else self.img2img
        pipeline.scheduler = make_scheduler(request.sampler, self.base_scheduler_config)

        # 4. One CPU generator per image: image i gets seed + i, the same on every device.
        seeds = [seed + index for index in range(request.count)]
        generators = [torch.Generator("cpu").manual_seed(image_seed) for image_seed in seeds]

        # 5. Denoise and decode.
        def step_end(pipe: Any, step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if on_step is not None:
                on_step(step + 1, pipe.num_timesteps, tensors["latents"])
            return tensors

        size: dict[str, Any] = (
            {"width": request.width, "height": request.height} if init_image is None
            else {"image": init_image, "strength": strength}
        )
        with torch.inference_mode():
            result = pipeline(
                prompt_embeds=positive,
                negative_prompt_embeds=negative,
                num_inference_steps=request.steps,
                guidance_scale=request.cfg,
                num_images_per_prompt=request.count,
                generator=generators,
                callback_on_step_end=step_end,
                callback_on_step_end_tensor_inputs=["latents"],
                output_type="pil",
                **size,
            )
        images: list[Image.Image] = list(result.images)
        return GenerationOutput(images, seeds, [None] * len(images), time.perf_counter() - started)
