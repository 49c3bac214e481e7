"""What a follow-up job starts from: the member's upload (img2img), or a posted image (an upscale or a
variation), read back from Redis, opened as any picture from outside is (:func:`ponybot.images.open_image`),
checked by the image check in SFW channels, sized for the request."""

from __future__ import annotations

from collections.abc import Callable

import redis
from PIL import Image

from ponybot.errors import GenerationError, ImageRefusal
from ponybot.images import ImageLimits, open_image
from ponybot.policy import EffectivePolicy, Mode
from ponybot.schemas import GenerationRequest, InpaintSpec, Job, JobKind, Margins, ResizeMode, upscale_size
from worker.inpaint import Prepared, canvas, prepare
from worker.resize import resize_image
from worker.safety import Verdict

#: The image check of one picture for a job in its channel: ``runtime.screen``.
Screen = Callable[[Job, EffectivePolicy | None, list[Image.Image]], list[Verdict]]


def read_image(conn: redis.Redis, key: str, limits: ImageLimits) -> Image.Image | None:
    """An image the bot or a worker stored in Redis, as RGB, or None once it expired
    (GenerationError ``unreadable_source`` when it is no picture that may be opened)."""
    data = conn.get(key)
    if data is None:
        return None
    try:
        return open_image(data, limits)  # type: ignore[arg-type, unused-ignore]
    except ImageRefusal as error:
        raise GenerationError("unreadable_source", f"the image it starts from could not be used: {error}") from None


def checked_picture(conn: redis.Redis, key: str, expired: str, job: Job, policy: EffectivePolicy | None,
                    screen: Screen, limits: ImageLimits) -> Image.Image:
    """The picture at ``key``, through the image check in an SFW channel (GenerationError ``expired`` with
    ``expired`` once it is gone, ``unsafe_source`` when the check does not pass it)."""
    picture = read_image(conn, key, limits)
    if picture is None:
        raise GenerationError("expired", expired)
    if policy is not None and policy.mode is Mode.SFW and screen(job, policy, [picture])[0].flagged is not False:
        raise GenerationError("unsafe_source", "the image it starts from did not pass this channel's image check")
    return picture


def fit_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """``width`` x ``height`` in multiples of 64, shrunk at the same aspect to at most ``max_pixels``."""
    factor = min(1.0, (max_pixels / (width * height)) ** 0.5)
    return max(64, int(width * factor) // 64 * 64), max(64, int(height * factor) // 64 * 64)


def inpaint_point(conn: redis.Redis, job: Job, policy: EffectivePolicy | None, screen: Screen,
                  max_canvas_pixels: int, limits: ImageLimits) -> tuple[GenerationRequest, Prepared]:
    """The request as generated and the picture and mask of an inpaint (the member's upload and mask) or an
    outpaint (a posted image on its larger canvas, at most ``max_canvas_pixels``); GenerationError as
    :func:`starting_point`, or ``empty_mask`` when the mask redraws nothing."""
    spec = job.inpaint or InpaintSpec()
    if job.kind is JobKind.OUTPAINT:
        if job.source is None:
            raise GenerationError("invalid_request", "an outpaint job needs the image it starts from")
        source = checked_picture(conn, job.source.key, "the image it starts from has expired", job, policy, screen,
                                 limits)
        picture, mask = canvas(source, job.margins or Margins())
        width, height = fit_size(picture.width, picture.height, max_canvas_pixels)
        request = job.request.model_copy(update={"width": width, "height": height, "count": 1})
        resize_mode = ResizeMode.JUST_RESIZE
    else:
        if job.upload is None or spec.mask_key is None:
            raise GenerationError("invalid_request", "an inpaint job needs a picture and a mask")
        picture = checked_picture(conn, job.upload.key, "the uploaded picture it starts from has expired", job,
                                  policy, screen, limits)
        given = read_image(conn, spec.mask_key, limits)
        if given is None:
            raise GenerationError("expired", "the uploaded mask has expired")
        mask, request, resize_mode = given, job.request, job.upload.resize_mode
    prepared = prepare(picture, mask, request.width, request.height, spec, resize_mode)
    if prepared is None:
        raise GenerationError("empty_mask", "the mask is black all over: paint white where the picture is redrawn")
    return request, prepared


def starting_point(conn: redis.Redis, job: Job, policy: EffectivePolicy | None, screen: Screen,
                   max_upscale_pixels: int, limits: ImageLimits) -> tuple[GenerationRequest, Image.Image | None]:
    """The request as generated, and the image an upscale, variation or upload img2img starts from
    (GenerationError when it expired, could not be opened, or failed the image check of an SFW channel).
    ``limits``: the uploads' pixel limits; no byte limit, as the bot stored the upload re-encoded as PNG."""
    upload = job.upload if job.kind is JobKind.IMG2IMG else None
    if upload is not None:
        key, expired = upload.key, "the uploaded picture it starts from has expired"
    elif job.kind is JobKind.TXT2IMG or job.source is None:
        return job.request, None
    else:
        key, expired = job.source.key, "the image it starts from has expired"
    picture = checked_picture(conn, key, expired, job, policy, screen, limits)
    if upload is not None:
        request = job.request
        return request, resize_image(picture, request.width, request.height, upload.resize_mode)
    width, height = picture.size
    if job.kind is JobKind.UPSCALE:
        width, height = upscale_size(width, height, max_upscale_pixels)
        picture = picture.resize((width, height), Image.Resampling.LANCZOS)
    return job.request.model_copy(update={"width": width, "height": height, "count": 1}), picture
