"""What a follow-up job starts from: the member's upload (img2img), or a posted image (an upscale or a
variation), read back from Redis, checked by the image check in SFW channels, sized for the request."""

from __future__ import annotations

import io
from collections.abc import Callable

import redis
from PIL import Image

from ponybot.errors import GenerationError
from ponybot.policy import EffectivePolicy, Mode
from ponybot.schemas import GenerationRequest, Job, JobKind, upscale_size
from worker.resize import resize_image
from worker.safety import Verdict

#: The image check of one picture for a job in its channel: ``runtime.screen``.
Screen = Callable[[Job, EffectivePolicy | None, list[Image.Image]], list[Verdict]]


def uploaded(conn: redis.Redis, job: Job) -> Image.Image | None:
    """The member's uploaded picture as stored by the bot, or None once expired."""
    assert job.upload is not None
    data = conn.get(job.upload.key)
    if data is None:
        return None
    return Image.open(io.BytesIO(data)).convert("RGB")  # type: ignore[arg-type]


def starting_point(conn: redis.Redis, job: Job, policy: EffectivePolicy | None, screen: Screen,
                   max_upscale_pixels: int) -> tuple[GenerationRequest, Image.Image | None]:
    """The request as generated, and the image an upscale, variation or upload img2img starts from
    (GenerationError when it expired, or failed the image check of an SFW channel)."""
    sfw = policy is not None and policy.mode is Mode.SFW
    unsafe = GenerationError("unsafe_source", "the image it starts from did not pass this channel's image check")
    if job.kind is JobKind.IMG2IMG and job.upload is not None:
        picture = uploaded(conn, job)
        if picture is None:
            raise GenerationError("expired", "the uploaded picture it starts from has expired")
        if sfw and screen(job, policy, [picture])[0].flagged is not False:
            raise unsafe
        request = job.request
        return request, resize_image(picture, request.width, request.height, job.upload.resize_mode)
    if job.kind is JobKind.TXT2IMG or job.source is None:
        return job.request, None
    data = conn.get(job.source.key)
    if data is None:
        raise GenerationError("expired", "the image it starts from has expired")
    source = Image.open(io.BytesIO(data)).convert("RGB")  # type: ignore[arg-type]
    if sfw and screen(job, policy, [source])[0].flagged is not False:
        raise unsafe
    width, height = source.size
    if job.kind is JobKind.UPSCALE:
        width, height = upscale_size(width, height, max_upscale_pixels)
        source = source.resize((width, height), Image.Resampling.LANCZOS)
    return job.request.model_copy(update={"width": width, "height": height, "count": 1}), source
