"""A1111-style ``parameters`` text: written into each PNG, shown by the Details button.

A1111 reads this text line by line: the last line holds the settings, a line starting
``Negative prompt:`` starts the negative prompt. So a prompt's own lines could pose as
other fields. Prompts are written on one line each (CLIP reads a newline as a space, so
the tokens are the same), and a prompt that begins with ``Negative prompt:`` has it
written in lower case (CLIP lower-cases everything): what a prompt says can never be
read back as another field. Control characters are refused before a job is queued
(:func:`ponybot.schemas.check_text`).
"""

from __future__ import annotations

from ponybot.schemas import STRENGTH, GenerationRequest, Job, JobKind

NEGATIVE_MARKER = "Negative prompt:"


def one_line(text: str, *, first: bool = False) -> str:
    """``text`` as it is written into the metadata: one line; the first field never starts with the marker."""
    flat = " ".join(part.strip() for part in text.splitlines() if part.strip())
    if first and flat.startswith(NEGATIVE_MARKER):
        flat = NEGATIVE_MARKER.lower() + flat[len(NEGATIVE_MARKER):]
    return flat


def format_parameters(job: Job, index: int, prompt: str, negative_prompt: str, model: str,
                      size: tuple[int, int] | None = None) -> str:
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
    if job.kind is not JobKind.TXT2IMG:
        fields["Denoising strength"] = STRENGTH[job.kind]
        if job.source:
            fields["Source"] = f"{job.source.job_id}:{job.source.index}"
    settings = ", ".join(f"{key}: {value}" for key, value in fields.items())
    return f"{one_line(prompt, first=True)}\n{NEGATIVE_MARKER} {one_line(negative_prompt)}\n{settings}"


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
            f"count:{request.count} quality:{quality}")
