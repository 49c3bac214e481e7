"""``ponybot generate --image [--mask]``: a picture to start from (img2img) and a mask to inpaint under, checked
as /generate checks them (:func:`ponybot.options.make_edit`, :func:`ponybot.images.open_image`)."""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import redis

from ponybot import keys
from ponybot.errors import ImageRefusal, PonybotError
from ponybot.images import ImageLimits, open_image
from ponybot.options import make_edit
from ponybot.schemas import MAX_INPAINT_PADDING, MAX_MASK_BLUR, InpaintArea, Job, JobKind, ResizeMode, UploadedImage
from ponybot.settings import DefaultSettings, Settings

DEFAULTS = DefaultSettings()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", type=Path, help="start from this picture (PNG, JPEG or WebP): img2img, or "
                                                   "inpaint with --mask (default: none, txt2img)")
    parser.add_argument("--strength", type=float, help="with --image: how much to change it, 0.05..1 "
                                                         f"(default: defaults.strength, {DEFAULTS.strength:g})")
    parser.add_argument("--resize-mode", choices=[m.value for m in ResizeMode],
                          help="with --image: how to fit it to --size (default: just_resize)")
    parser.add_argument("--mask", type=Path, help="with --image: redraw where this picture is white (inpaint)")
    parser.add_argument("--inpaint-area", choices=[a.value for a in InpaintArea],
                          help="with --mask: the whole picture, or only the masked part at full size (default: whole)")
    parser.add_argument("--mask-blur", type=int, help=f"with --mask: pixels, 0..{MAX_MASK_BLUR} (default: 4)")
    parser.add_argument("--inpaint-padding", type=int,
                          help=f"with --inpaint-area only_masked: pixels, 0..{MAX_INPAINT_PADDING} (default: 32)")


def pictures_from_args(args: argparse.Namespace, settings: Settings) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The job fields of ``--image`` (and ``--mask``), checked as /generate checks them (make_edit, open_image),
    and the PNG bytes to store for them: field -> bytes (``upload``, ``mask``)."""
    strength, resize_mode, inpaint = make_edit(settings, image=args.image is not None, mask=args.mask is not None,
                                               options={"strength": args.strength, "resize_mode": args.resize_mode,
                                                        "inpaint_area": args.inpaint_area, "mask_blur": args.mask_blur,
                                                        "inpaint_padding": args.inpaint_padding})
    if args.image is None:
        return {}, {}
    limits = ImageLimits.of(settings.uploads)
    stored = {}
    for field, path in (("upload", args.image), ("mask", args.mask)):
        if path is not None:
            try:
                picture = open_image(Path(path), limits)
            except ImageRefusal as error:
                raise PonybotError(f"--{'image' if field == 'upload' else 'mask'} {path}: {error}") from None
            out = io.BytesIO()
            picture.save(out, format="PNG", compress_level=1)
            stored[field] = out.getvalue()
            if field == "upload":
                width, height = picture.size
    upload = UploadedImage(key="", filename=Path(args.image).name[:200], width=width, height=height,
                           strength=strength, resize_mode=resize_mode)
    fields: dict[str, Any] = {"kind": JobKind.IMG2IMG if inpaint is None else JobKind.INPAINT, "upload": upload,
                              "inpaint": inpaint}
    return fields, stored


def with_keys(job: Job) -> Job:
    """``job`` with its picture and mask under this job's upload keys."""
    if job.upload is not None:
        job = job.model_copy(update={"upload": job.upload.model_copy(update={"key": keys.upload(job.id)})})
    if job.inpaint is not None:
        job = job.model_copy(update={"inpaint": job.inpaint.model_copy(update={"mask_key": keys.upload_mask(job.id)})})
    return job


def store(conn: redis.Redis, job: Job, pictures: dict[str, bytes], ttl_s: int) -> None:
    """The picture and mask of :func:`pictures_from_args` where the worker reads them (as the bot stores uploads)."""
    for field, png in pictures.items():
        conn.set(keys.upload(job.id) if field == "upload" else keys.upload_mask(job.id), png, ex=ttl_s)
