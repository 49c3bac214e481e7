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


def read_image(conn: redis.Redis, key: str) -> Image.Image | None:
    """An image the bot or a worker stored in Redis, as RGB, or None once it expired."""
    data = conn.get(key)
    if data is None:
        return None
    return Image.open(io.BytesIO(data)).convert("RGB")  # type: ignore[arg-type]


def starting_point(conn: redis.Redis, job: Job, policy: EffectivePolicy | None, screen: Screen,
                   max_upscale_pixels: int) -> tuple[GenerationRequest, Image.Image | None]:
    """The request as generated, and the image an upscale, variation or upload img2img starts from
    (GenerationError when it expired, or failed the image check of an SFW channel)."""
    upload = job.upload if job.kind is JobKind.IMG2IMG else None
    if upload is not None:
        key, expired = upload.key, "the uploaded picture it starts from has expired"
    elif job.kind is JobKind.TXT2IMG or job.source is None:
        return job.request, None
    else:
        key, expired = job.source.key, "the image it starts from has expired"
    picture = read_image(conn, key)
    if picture is None:
        raise GenerationError("expired", expired)
    if policy is not None and policy.mode is Mode.SFW and screen(job, policy, [picture])[0].flagged is not False:
        raise GenerationError("unsafe_source", "the image it starts from did not pass this channel's image check")
    if upload is not None:
        request = job.request
        return request, resize_image(picture, request.width, request.height, upload.resize_mode)
    width, height = picture.size
    if job.kind is JobKind.UPSCALE:
        width, height = upscale_size(width, height, max_upscale_pixels)
        picture = picture.resize((width, height), Image.Resampling.LANCZOS)
    return job.request.model_copy(update={"width": width, "height": height, "count": 1}), picture
