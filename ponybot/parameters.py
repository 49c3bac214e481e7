"""A1111-style ``parameters`` text: written into each PNG, shown by the Details button."""

from __future__ import annotations

from ponybot.schemas import STRENGTH, GenerationRequest, Job, JobKind, Speed


def format_parameters(job: Job, index: int, prompt: str, negative_prompt: str, model: str,
                      size: tuple[int, int] | None = None, fast_interval: int = 3) -> str:
    """The text A1111 writes into its PNGs, so the image can be reproduced there too."""
    request = job.request
    fields: dict[str, object] = {
        "Steps": request.steps,
        "Sampler": request.sampler.label,
        "CFG scale": f"{request.cfg:g}",
        "Seed": job.image_seed(index),
        "Size": "{}x{}".format(*(size or (request.width, request.height))),
        "Model": model,
        "Clip skip": request.clip_skip,
        "Job": job.id,
    }
    if request.speed is Speed.FAST:
        fields["Speed"] = f"fast (DeepCache interval {fast_interval})"
    if job.kind is not JobKind.TXT2IMG:
        fields["Denoising strength"] = STRENGTH[job.kind]
        if job.source:
            fields["Source"] = f"{job.source.job_id}:{job.source.index}"
    settings = ", ".join(f"{key}: {value}" for key, value in fields.items())
    return f"{prompt}\nNegative prompt: {negative_prompt}\n{settings}"


def parse_parameters(text: str) -> dict[str, str]:
    """The inverse, for tests and the Details button: prompt, negative prompt and each field."""
    prompt, _, rest = text.partition("\nNegative prompt: ")
    negative, _, settings = rest.rpartition("\n")
    parsed = {"prompt": prompt, "negative_prompt": negative}
    for pair in settings.split(", "):
        key, _, value = pair.partition(": ")
        parsed[key] = value
    return parsed


def generate_line(request: GenerationRequest, seed: int, quality: bool) -> str:
    """The ``/generate`` command that asks for the same request with the same seed."""
    negative = f" negative_prompt:{request.negative_prompt}" if request.negative_prompt else ""
    return (f"/generate prompt:{request.prompt}{negative} seed:{seed} steps:{request.steps} cfg:{request.cfg:g} "
            f"size:{request.width}x{request.height} sampler:{request.sampler.value} clip_skip:{request.clip_skip} "
            f"count:{request.count} quality:{quality}{' speed:fast' if request.speed is Speed.FAST else ''}")
