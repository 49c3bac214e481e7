"""A1111-style ``parameters`` text: written into each PNG, shown by the Details button."""

from __future__ import annotations

from ponybot.schemas import Job


def format_parameters(job: Job, index: int, prompt: str, negative_prompt: str, model: str) -> str:
    """The text A1111 writes into its PNGs, so the image can be reproduced there too."""
    request = job.request
    fields = {
        "Steps": request.steps,
        "Sampler": request.sampler.label,
        "CFG scale": f"{request.cfg:g}",
        "Seed": job.image_seed(index),
        "Size": f"{request.width}x{request.height}",
        "Model": model,
        "Clip skip": request.clip_skip,
        "Job": job.id,
    }
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
