"""``generate()``: one job's images from the resident pipeline, in numbered steps."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import numpy_to_pil
from PIL import Image

from ponybot.errors import GenerationError
from ponybot.networks import LoraRef, strip_loras
from ponybot.schemas import GenerationRequest, Speed, image_seed
from worker.adapters import Adapters
from worker.deepcache import deep_cache
from worker.encoding import PromptEncoder
from worker.inpaint import Prepared
from worker.loading import LoadedModel
from worker.networks import Catalog
from worker.schedulers import make_scheduler

log = logging.getLogger(__name__)

#: Peak bytes per output pixel of SD1.5's VAE decoder in fp16 (about 1.5 GiB for one 512x512 image).
VAE_BYTES_PER_PIXEL = 6144

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
        self._inpaint: Any = None
        #: the 9-channel UNet of the model's ``inpaint_source``; None: the model's own UNet blends latents
        self.inpaint_unet: Any = None
        self.vae_decode = "auto"  #: worker.vae_decode
        self.fast_interval = 3  #: worker.fast_interval: speed fast runs the full UNet every this many steps
        self.cuda_graphs = False  #: the UNet replays CUDA graphs (compiled in reduce-overhead mode)

    @property
    def img2img(self) -> Any:
        """img2img over the same loaded modules: no second model in memory."""
        if self._img2img is None:
            from diffusers import StableDiffusionImg2ImgPipeline

            self._img2img = StableDiffusionImg2ImgPipeline(**self.pipeline.components, requires_safety_checker=False)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img

    @property
    def inpaint(self) -> Any:
        """Inpainting over the same loaded modules: the inpainting UNet when the model names one, else the
        model's own UNet with the kept area's latents blended back in at every step."""
        if self._inpaint is None:
            from diffusers import StableDiffusionInpaintPipeline

            components = dict(self.pipeline.components)
            if self.inpaint_unet is not None:
                components["unet"] = self.inpaint_unet
            self._inpaint = StableDiffusionInpaintPipeline(**components, requires_safety_checker=False)
            self._inpaint.set_progress_bar_config(disable=True)
        return self._inpaint

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
        inpaint: Prepared | None = None,
    ) -> GenerationOutput:
        """Images for ``request`` (txt2img), or from ``init_image`` at ``strength`` (img2img, its size), or
        ``inpaint``'s picture redrawn under its mask at ``strength`` (the request's size)."""
        item = BatchItem(prompt, negative_prompt, seed, request.count)
        return self.generate_batch(request, [item], on_step=on_step, init_image=init_image, strength=strength,
                                   inpaint=inpaint)[0]

    def generate_batch(self, request: GenerationRequest, items: list[BatchItem], **options: Any
                       ) -> list[GenerationOutput]:
        """Several jobs of the same shape as one batch, as images (options: :meth:`generate_deferred`'s)."""
        return self.generate_deferred(request, items, **options).outputs()

    def generate_deferred(
        self,
        request: GenerationRequest,
        items: list[BatchItem],
        *,
        on_step: StepCallback | None = None,
        init_image: Image.Image | None = None,
        strength: float = 1.0,
        loras: list[LoraRef] | None = None,
        inpaint: Prepared | None = None,
    ) -> DeferredBatch:
        """Several jobs of the same shape (size, steps, sampler, CFG, CLIP skip, speed, LoRA set) as one batch.

        ``request`` gives the shape; each item its own prompts, seed and count. Every image keeps
        its own CPU generator (seed + i), so its starting noise is what it would be alone. LoRA tags
        in the prompts are taken out of the text; ``loras`` (the batch's one set) are applied. Returns
        as soon as the GPU has its work queued: the decoded pixels are on their way to pinned host
        memory, and :meth:`DeferredBatch.outputs` turns them into images (on another thread if
        the caller likes), so the next batch can start meanwhile.
        """
        started = time.perf_counter()
        timer = GpuTimer.start(self.model.device)

        # 1. Check inputs: the contract validated them; the model adds its own constraint.
        factor = self.pipeline.vae_scale_factor * 8
        for name, value in (("width", request.width), ("height", request.height)):
            if value % factor:
                raise GenerationError("invalid_request", f"{name} must be a multiple of {factor} for this model")
        if (init_image is not None or inpaint is not None) and (not 0 < strength <= 1 or len(items) != 1):
            raise GenerationError("invalid_request", f"img2img takes one job and a strength in (0, 1], got {strength}")

        # 2. The batch's LoRAs active with their weights, the embeddings its prompts name loaded.
        loras = loras or []
        self.adapters.use_loras(loras)
        self.adapters.use_embeddings([text for item in items for text in (item.prompt, item.negative_prompt)])
        hashes = {"Model hash": self.model.hash, "Lora hashes": ", ".join(
            f"{lora.name.replace(':', '').replace(',', '')}: {self.adapters.hashes[lora.name]}"
            for lora in loras if lora.weight != 0)}

        # 3. Encode every prompt and negative prompt the same way (CLIP skip, chunks, emphasis), to one
        #    length, in one pass through CLIP.
        chunked = [chunks for i in items for chunks in (self.encoder.chunks(strip_loras(i.prompt)),
                                                        self.encoder.chunks(i.negative_prompt))]
        embeds = self.encoder.encode_many(chunked, request.clip_skip)
        counts = [i.count for i in items]
        positive = torch.cat([e.repeat(n, 1, 1) for e, n in zip(embeds[0::2], counts, strict=True)])
        negative = torch.cat([e.repeat(n, 1, 1) for e, n in zip(embeds[1::2], counts, strict=True)])
        positive, negative = (t.to(self.model.device, self.model.dtype) for t in (positive, negative))

        # 4. A fresh scheduler for the chosen sampler, on the pipeline this batch runs.
        pipeline = self.inpaint if inpaint is not None else self.pipeline if init_image is None else self.img2img
        pipeline.scheduler = make_scheduler(request.sampler, self.base_scheduler_config)

        # 5. One CPU generator per image: image i of a job gets (seed + i) mod 2**32, the same on every device.
        seeds = [[image_seed(item.seed, index) for index in range(item.count)] for item in items]
        generators = [torch.Generator("cpu").manual_seed(seed) for job_seeds in seeds for seed in job_seeds]

        # 6. Denoise and decode: the VAE decodes the batch in one pass when memory allows (else in slices).
        def step_end(pipe: Any, step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if graphs:
                # the next UNet call is a new replay: the last step's outputs may be overwritten
                torch.compiler.cudagraph_mark_step_begin()  # type: ignore[no-untyped-call, unused-ignore]
            if on_step is not None:
                on_step(step + 1, pipe.num_timesteps, tensors["latents"])
            return tensors

        size: dict[str, Any] = (
            {"width": request.width, "height": request.height} if init_image is None
            else {"image": init_image, "strength": strength}
        )
        if inpaint is not None:
            size = {"width": request.width, "height": request.height, "image": inpaint.image,
                    "mask_image": inpaint.mask, "strength": strength}
        width, height = (request.width, request.height) if init_image is None else init_image.size
        if vae_slicing(self.vae_decode, self.model.device, self.model.dtype, len(generators), width, height):
            pipeline.vae.enable_slicing()
        else:
            pipeline.vae.disable_slicing()
        fast = request.speed is Speed.FAST
        graphs = self.cuda_graphs and not fast
        with torch.inference_mode(), deep_cache(pipeline.unet, self.fast_interval if fast else 0):
            result = pipeline(
                prompt_embeds=positive,
                negative_prompt_embeds=negative,
                num_inference_steps=request.steps,
                guidance_scale=request.cfg,
                num_images_per_prompt=1,
                generator=generators,
                callback_on_step_end=step_end,
                callback_on_step_end_tensor_inputs=["latents"],
                output_type="pt",
                **size,
            )
        batch = DeferredBatch(HostImages(result.images), seeds, started, timer, hashes)
        batch.finish = inpaint.finish if inpaint is not None else None
        return batch


def vae_slicing(setting: str, device: torch.device, dtype: torch.dtype, images: int, width: int, height: int) -> bool:
    """Whether the VAE decodes one image at a time: ``sliced``, or ``auto`` when the batch would not fit.

    ``auto`` decodes the whole batch in one pass (one launch per layer, not one per image) unless
    its estimated peak (:data:`VAE_BYTES_PER_PIXEL` per output pixel in fp16) is over half of the
    memory the GPU has free, cached blocks included. On the CPU a batch is always decoded in one pass.
    """
    if setting != "auto":
        return setting == "sliced"
    if images <= 1 or device.type != "cuda":
        return False
    free, _total = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    need = images * width * height * VAE_BYTES_PER_PIXEL * dtype.itemsize / 2
    return need > free / 2


@dataclass
class GpuTimer:
    """Seconds a batch took on the device: CUDA events (no sync to take them), the host clock elsewhere."""

    begin: torch.cuda.Event | None

    @classmethod
    def start(cls, device: torch.device) -> GpuTimer:
        if device.type != "cuda":
            return cls(None)
        begin = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call, unused-ignore]
        begin.record()
        return cls(begin)

    def end(self) -> torch.cuda.Event | None:
        if self.begin is None:
            return None
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call, unused-ignore]
        end.record()
        return end


class HostImages:
    """A batch's decoded pixels ([0, 1], NCHW) copied to host memory without waiting for the GPU."""

    def __init__(self, images: torch.Tensor) -> None:
        self.ready: torch.cuda.Event | None = None
        if images.device.type == "cuda":
            self.host = torch.empty(images.shape, dtype=images.dtype, pin_memory=True)
            self.host.copy_(images, non_blocking=True)
            self.ready = torch.cuda.Event()  # type: ignore[no-untyped-call, unused-ignore]
            self.ready.record()
        else:
            self.host = images

    def pil(self) -> list[Image.Image]:
        """The images, as diffusers' ``output_type="pil"`` makes them (waits for the copy)."""
        if self.ready is not None:
            self.ready.synchronize()
        array = self.host.permute(0, 2, 3, 1).float().numpy()
        return list(numpy_to_pil(array))

    def finite(self) -> list[bool]:
        """Per image: no NaN or inf in its pixels (call after :meth:`pil`, which waits for the copy)."""
        return [bool(ok) for ok in torch.isfinite(self.host).flatten(1).all(1).tolist()]


@dataclass
class DeferredBatch:
    """A batch the GPU is finishing: its pixels on their way to the host, each job's seeds."""

    images: HostImages
    seeds: list[list[int]]
    started: float
    timer: GpuTimer
    hashes: dict[str, str | None] = field(default_factory=dict)  #: A1111's ``Model hash`` and ``Lora hashes``
    end: torch.cuda.Event | None = field(default=None, init=False)
    #: each decoded image's last touch on the host (an inpaint's paste back over the original)
    finish: Callable[[Image.Image], Image.Image] | None = field(default=None, init=False)
    seconds: float = field(default=0.0, init=False)  #: on the device, start to pixels on the host

    def __post_init__(self) -> None:
        self.end = self.timer.end()
        if self.end is None:
            self.seconds = time.perf_counter() - self.started  # on the CPU the work is done by now

    def outputs(self) -> list[GenerationOutput]:
        """Back to one output per job, as PIL images (waits for the GPU to finish this batch);
        a job with NaN/inf pixels fails instead of posting black squares."""
        images = self.images.pil()
        if self.finish is not None:
            images = [self.finish(image) for image in images]
        finite = self.images.finite()
        if self.end is not None and self.timer.begin is not None:
            self.end.synchronize()  # recorded just after the copy: nothing more to wait for
            self.seconds = self.timer.begin.elapsed_time(self.end) / 1000
        outputs, offset = [], 0
        for job_seeds in self.seeds:
            mine = images[offset : offset + len(job_seeds)]
            bad = [index for index, ok in enumerate(finite[offset : offset + len(job_seeds)]) if not ok]
            if bad:
                log.error("generation produced NaN/inf pixels for seeds %s", [job_seeds[i] for i in bad])
                outputs.append(GenerationOutput([], job_seeds, [], self.seconds, self.hashes,
                                                error=non_finite_error(job_seeds, bad)))
            else:
                outputs.append(GenerationOutput(mine, job_seeds, [None] * len(mine), self.seconds, self.hashes))
            offset += len(job_seeds)
        return outputs
