"""``generate()``: one job's images from the resident pipeline, in numbered steps."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ponybot.errors import GenerationError
from ponybot.networks import strip_loras
from ponybot.schemas import GenerationRequest, LoraRef
from worker.adapters import Adapters
from worker.encoding import PromptEncoder
from worker.loading import LoadedModel
from worker.networks import Catalog
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
    hashes: dict[str, str | None] = field(default_factory=dict)  #: A1111's ``Model hash`` and ``Lora hashes``
    tags: list[dict[str, float]] = field(default_factory=list)  #: the tags the image tagger read, per image


class Generator:
    """Owns the resident pipeline, its LoRAs and embeddings, and the project's prompt encoder."""

    def __init__(self, model: LoadedModel, catalog: Catalog | None = None, lora_cache: int = 8) -> None:
        self.model = model
        self.pipeline = model.pipeline
        if catalog is None:  # no folders configured: none to find
            catalog = Catalog(Path("/nonexistent/loras"), Path("/nonexistent/embeddings"), [model.architecture])
        self.adapters = Adapters(self.pipeline, catalog, lora_cache)
        self.encoder = PromptEncoder(self.pipeline.tokenizer, self.pipeline.text_encoder, self.adapters.embeddings)
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
        loras: list[LoraRef] | None = None,
    ) -> list[GenerationOutput]:
        """Several jobs of the same shape (size, steps, sampler, CFG, CLIP skip, LoRA set) as one batch.

        ``request`` gives the shape; each item its own prompts, seed and count. Every image keeps
        its own CPU generator (seed + i), so its starting noise is what it would be alone. LoRA tags
        in the prompts are taken out of the text; ``loras`` (the batch's one set) are applied.
        """
        started = time.perf_counter()

        # 1. Check inputs: the contract validated them; the model adds its own constraint.
        factor = self.pipeline.vae_scale_factor * 8
        for name, value in (("width", request.width), ("height", request.height)):
            if value % factor:
                raise GenerationError("invalid_request", f"{name} must be a multiple of {factor} for this model")
        if init_image is not None and (not 0 < strength <= 1 or len(items) != 1):
            raise GenerationError("invalid_request", f"img2img takes one job and a strength in (0, 1], got {strength}")

        # 2. The batch's LoRAs active with their weights, the embeddings its prompts name loaded.
        loras = loras or []
        self.adapters.use_loras(loras)
        self.adapters.use_embeddings([text for item in items for text in (item.prompt, item.negative_prompt)])
        hashes = {"Model hash": self.model.hash, "Lora hashes": ", ".join(
            f"{lora.name.replace(':', '').replace(',', '')}: {self.adapters.hashes[lora.name]}"
            for lora in loras if lora.weight != 0)}

        # 3. Encode prompts and negative prompts the same way (CLIP skip, chunks, emphasis), one length for all.
        chunked = [(self.encoder.chunks(strip_loras(i.prompt)), self.encoder.chunks(i.negative_prompt)) for i in items]
        length = max(max(len(pos), len(neg)) for pos, neg in chunked)
        def embed(side: int) -> torch.Tensor:
            rows = [self.encoder.encode_chunks(pair[side], request.clip_skip, min_chunks=length).repeat(i.count, 1, 1)
                    for pair, i in zip(chunked, items, strict=True)]
            return torch.cat(rows).to(self.model.device, self.model.dtype)

        positive, negative = embed(0), embed(1)

        # 4. A fresh scheduler for the chosen sampler, on the pipeline this batch runs.
        pipeline = self.pipeline if init_image is None else self.img2img
        pipeline.scheduler = make_scheduler(request.sampler, self.base_scheduler_config)

        # 5. One CPU generator per image: image i of a job gets seed + i, the same on every device.
        seeds = [[item.seed + index for index in range(item.count)] for item in items]
        generators = [torch.Generator("cpu").manual_seed(seed) for job_seeds in seeds for seed in job_seeds]

        # 6. Denoise and decode (the VAE decodes in slices when batched, to bound its memory).
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
                output_type="pil",
                **size,
            )
        images: list[Image.Image] = list(result.images)

        # 7. Back to one output per job.
        seconds = time.perf_counter() - started
        outputs, offset = [], 0
        for job_seeds in seeds:
            mine = images[offset : offset + len(job_seeds)]
            outputs.append(GenerationOutput(mine, job_seeds, [None] * len(mine), seconds, hashes))
            offset += len(job_seeds)
        return outputs
