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

import json
import re

from ponybot.schemas import GenerationRequest, InpaintArea, InpaintSpec, Job, JobKind, MaskedContent, Speed

#: A1111's pattern for one ``key: value`` pair of the settings line (a value may be a JSON string).
PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def quote(value: object) -> str:
    """A1111's quoting: a value holding a comma, colon or newline is written as a JSON string."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(char in text for char in ",:\n") else text

NEGATIVE_MARKER = "Negative prompt:"


def one_line(text: str, *, first: bool = False) -> str:
    """``text`` as it is written into the metadata: one line; the first field never starts with the marker."""
    flat = " ".join(part.strip() for part in text.splitlines() if part.strip())
    if first and flat.startswith(NEGATIVE_MARKER):
        flat = NEGATIVE_MARKER.lower() + flat[len(NEGATIVE_MARKER):]
    return flat


def format_parameters(job: Job, index: int, prompt: str, negative_prompt: str, model: str,
                      size: tuple[int, int] | None = None, extra: dict[str, str | None] | None = None,
                      fast_interval: int = 3) -> str:
    """The text A1111 writes into its PNGs, so the image can be reproduced there too.

    ``extra``: ``Model hash`` and ``Lora hashes`` as A1111 writes them (empty ones are left out).
    """
    request = job.request
    extra = {key: value for key, value in (extra or {}).items() if value}
    fields: dict[str, object] = {
        "Steps": request.steps,
        "Sampler": request.sampler.label,
        "CFG scale": f"{request.cfg:g}",
        "Seed": job.image_seed(index),
        "Size": "{}x{}".format(*(size or (request.width, request.height))),
        **({"Model hash": extra.pop("Model hash")} if "Model hash" in extra else {}),
        "Model": model,
        "Clip skip": request.clip_skip,
        **extra,
        "Job": job.id,
    }
    if request.speed is Speed.FAST:
        fields["Speed"] = f"fast (DeepCache interval {fast_interval})"
    if job.kind is not JobKind.TXT2IMG:
        fields["Denoising strength"] = job.strength
        if job.source:
            fields["Source"] = f"{job.source.job_id}:{job.source.index}"
    if job.kind in (JobKind.INPAINT, JobKind.OUTPAINT):
        spec = job.inpaint or InpaintSpec()
        fields["Mask blur"] = spec.mask_blur
        if spec.area is InpaintArea.ONLY_MASKED:  # A1111 writes both only for "Only masked"
            fields["Inpaint area"] = spec.area.label
            fields["Masked area padding"] = spec.padding
        if spec.content is not MaskedContent.ORIGINAL:
            fields["Masked content"] = spec.content.value
    settings = ", ".join(f"{key}: {quote(value)}" for key, value in fields.items())
    return f"{one_line(prompt, first=True)}\n{NEGATIVE_MARKER} {one_line(negative_prompt)}\n{settings}"


def parse_parameters(text: str) -> dict[str, str]:
    """The inverse, for tests and the Details button: prompt, negative prompt and each field."""
    prompt, _, rest = text.partition("\nNegative prompt: ")
    negative, _, settings = rest.rpartition("\n")
    parsed = {"prompt": prompt, "negative_prompt": negative}
    for match in PARAM.finditer(settings):
        key, value = match.group(1), match.group(2)
        parsed[key] = json.loads(value) if value.startswith('"') else value
    return parsed


def generate_line(request: GenerationRequest, seed: int, quality: bool) -> str:
    """The ``/generate`` command that asks for the same request with the same seed."""
    negative = f" negative_prompt:{request.negative_prompt}" if request.negative_prompt else ""
    return (f"/generate prompt:{request.prompt}{negative} seed:{seed} steps:{request.steps} cfg:{request.cfg:g} "
            f"size:{request.width}x{request.height} sampler:{request.sampler.value} clip_skip:{request.clip_skip} "
            f"count:{request.count} quality:{quality}{' speed:fast' if request.speed is Speed.FAST else ''}"
            + (f" model:{request.model}" if request.model else ""))
