"""Uploaded pictures without Discord: the bot's checks, the worker's A1111 resize modes, an expired upload."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import redis
from PIL import Image

from bot.i18n import MemberError
from bot.uploads import check_declared, inspect, sniff
from ponybot import keys
from ponybot.queue import enqueue
from ponybot.schemas import Job, JobEvent, JobKind, ResizeMode, UploadedImage, build_request
from ponybot.settings import Settings, UploadSettings
from tests.test_discord_img2img import picture, png_claiming
from worker.resize import resize_image
from worker.runner import GenerationWorker

LIMITS = UploadSettings()


@pytest.mark.parametrize(("fmt", "content_type"), [("PNG", "image/png"), ("JPEG", "image/jpeg"),
                                                    ("WEBP", "image/webp")])
def test_each_accepted_format_is_stored_as_png(fmt: str, content_type: str) -> None:
    data = picture((300, 200), fmt=fmt)
    expected = check_declared(content_type, len(data), LIMITS)
    assert sniff(data) == expected == fmt
    png, width, height = inspect(data, expected, LIMITS)
    assert (width, height) == (300, 200)
    assert Image.open(io.BytesIO(png)).format == "PNG"


def test_header_is_read_before_decoding() -> None:
    with pytest.raises(MemberError) as refused:
        inspect(png_claiming(9000, 9000), "PNG", LIMITS)
    assert refused.value.field == "image" and "9000x9000" in str(refused.value)
    with pytest.raises(MemberError, match="could not be read"):  # a truncated picture within the limits
        inspect(png_claiming(64, 64)[:-20], "PNG", LIMITS)


def bands() -> Image.Image:
    """200x100: red, blue, green columns (50, 100, 50 pixels wide)."""
    array = np.zeros((100, 200, 3), dtype=np.uint8)
    array[:, :50] = (255, 0, 0)
    array[:, 50:150] = (0, 0, 255)
    array[:, 150:] = (0, 255, 0)
    return Image.fromarray(array)


def test_resize_modes_as_a1111() -> None:
    stretched = resize_image(bands(), 100, 100, ResizeMode.JUST_RESIZE)
    assert stretched.size == (100, 100)
    assert tuple(stretched.getpixel((5, 50))) == (255, 0, 0)  # every band kept, squeezed
    cropped = np.asarray(resize_image(bands(), 100, 100, ResizeMode.CROP))
    assert cropped.shape == (100, 100, 3)
    assert (np.abs(cropped[:, 10:90].astype(int) - (0, 0, 255)) <= 2).all()  # the centre kept, the sides cut
    filled = np.asarray(resize_image(bands(), 100, 100, ResizeMode.FILL))
    # fitted as 100x50 in the middle; the bars above and below repeat its first and last rows
    assert (filled[:25] == filled[25]).all() and (filled[75:] == filled[74]).all()
    assert tuple(filled[50, 2]) == (255, 0, 0) and tuple(filled[50, 98]) == (0, 255, 0)
    tall = np.asarray(resize_image(bands().rotate(90, expand=True), 100, 100, ResizeMode.FILL))
    assert (tall[:, :25] == tall[:, 25:26]).all()  # bars left and right from the first column


@pytest.mark.parametrize(("stored", "code", "says"), [
    (None, "expired", "the uploaded picture it starts from has expired"),
    (png_claiming(30000, 30000), "unreadable_source", "could not be used: the picture is 30000x30000 pixels"),
    (b"not a picture", "unreadable_source", "could not be used: this file is not a PNG, JPEG or WebP picture"),
])
def test_upload_the_worker_cannot_use_fails_the_job_clearly(conn: redis.Redis, settings: Settings, runtime: Any,
                                                            stored: bytes | None, code: str, says: str) -> None:
    request = build_request(settings.limits, prompt="pony", steps=3, width=256, height=256)
    key = keys.upload(f"bad-{code}-{len(stored or b'')}")
    if stored is not None:
        conn.set(key, stored, ex=60)
    upload = UploadedImage(key=key, filename="a.png", width=64, height=64, strength=0.5)
    job = Job.create(request, kind=JobKind.IMG2IMG, upload=upload)
    enqueue(conn, job, max_queue=10, result_ttl_s=60)
    GenerationWorker(runtime).work(burst=True)
    event = JobEvent.model_validate_json(conn.xrange(keys.EVENTS_STREAM)[-1][1][b"data"])
    assert (event.kind, event.error_code) == ("failed", code)
    assert says in (event.error_message or "")
