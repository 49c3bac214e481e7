"""One image opener: every kind of bad picture through every place that opens one, each answering the same refusal."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image

from bot.i18n import MemberError
from bot.uploads import inspect
from gallery.db import images, make_engine, upgrade
from gallery.ingest import Ingest
from gallery.store import FolderStore, file_names
from ponybot import keys
from ponybot.commands.cli import main
from ponybot.errors import GenerationError, ImageRefusal
from ponybot.images import ImageLimits, open_image
from ponybot.schemas import Job, JobKind, UploadedImage, build_request
from ponybot.settings import LimitSettings, UploadSettings
from tests.gallery_harness import hand_over
from tests.test_discord_img2img import picture, png_claiming
from tests.test_safety_cli import labelled  # noqa: F401 (the tiny tagger and a labelled set)
from worker.sources import starting_point

MAX_BYTES = 100_000
UPLOADS = UploadSettings(max_bytes=MAX_BYTES)
LIMITS = ImageLimits.of(UPLOADS)


def frames(fmt: str, *colours: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> bytes:
    """An animation, one solid frame per colour."""
    out = io.BytesIO()
    first, *rest = [Image.new("RGB", size, colour) for colour in colours]
    first.save(out, format=fmt, save_all=True, append_images=rest, duration=100, loop=0)
    return out.getvalue()


def truncated() -> bytes:
    whole = picture((128, 128), noise=True, fmt="PNG")
    return whole[: len(whole) // 2]


@dataclass(frozen=True)
class Bad:
    make: Callable[[], bytes]
    reason: str
    says: str  #: what the refusal must say, wherever it is shown
    counted: bool = True  #: refused also where the bytes are already in memory (the worker, the gallery)


BAD = {
    "bomb header 30000x30000": Bad(lambda: png_claiming(30000, 30000), "too_many_pixels",
                                   "the picture is 30000x30000 pixels; this bot takes at most 16,777,216 pixels"),
    "truncated PNG": Bad(truncated, "corrupt", "the picture could not be read (image file is truncated"),
    "text file named .png": Bad(lambda: b"these are my notes, not a picture\n", "not_image",
                                "this file is not a PNG, JPEG or WebP picture"),
    "zero bytes": Bad(lambda: b"", "not_image", "this file is not a PNG, JPEG or WebP picture"),
    "animated GIF": Bad(lambda: frames("GIF", (0, 0, 0), (255, 0, 0)), "not_image",
                        "this file is not a PNG, JPEG or WebP picture"),
    "huge byte size": Bad(lambda: picture((320, 320), noise=True), "too_large",
                          "the picture is 0.3 MB; this bot takes at most 0.1 MB", counted=False),
}


def through_opener(data: bytes, request: pytest.FixtureRequest) -> str:
    with pytest.raises(ImageRefusal) as refused:
        open_image(data, LIMITS)
    return f"{refused.value.reason}: {refused.value}"


def through_upload(data: bytes, request: pytest.FixtureRequest) -> str:
    with pytest.raises(MemberError) as refused:
        inspect(data, "PNG", UPLOADS)  # what the bot runs on a downloaded attachment named .png
    assert refused.value.field == "image"
    return str(refused.value)


def img2img_job(conn: redis.Redis, data: bytes) -> Job:
    request = build_request(LimitSettings(), prompt="pony", steps=3, width=256, height=256)
    job = Job.create(request, kind=JobKind.IMG2IMG,
                     upload=UploadedImage(key="", filename="a.png", width=64, height=64, strength=0.5))
    assert job.upload is not None
    conn.set(keys.upload(job.id), data, ex=60)
    return job.model_copy(update={"upload": job.upload.model_copy(update={"key": keys.upload(job.id)})})


def through_worker(data: bytes, request: pytest.FixtureRequest) -> str | None:
    conn: redis.Redis = request.getfixturevalue("conn")
    job = img2img_job(conn, data)
    try:
        starting_point(conn, job, None, lambda *_: [], 1024 * 1024, ImageLimits.of(UPLOADS, count_bytes=False))
    except GenerationError as error:
        assert error.code == "unreadable_source"
        return str(error)
    return None


def safety(command: str, data: bytes, request: pytest.FixtureRequest) -> str:
    """``ponybot safety check|eval`` (the tiny tagger, uploads limited to MAX_BYTES) with one bad file among good."""
    folder: Path = request.getfixturevalue("labelled")
    request.getfixturevalue("monkeypatch").setenv("PONYBOT_UPLOADS__MAX_BYTES", str(MAX_BYTES))
    capsys: pytest.CaptureFixture[str] = request.getfixturevalue("capsys")
    (folder / "set" / "safe" / "bad.png").write_bytes(data)
    good = ["set/safe/black.png", "set/nsfw/red102.png"]
    code = main(["safety", "check", good[0], "set/safe/bad.png", good[1]] if command == "check" else
                ["safety", "eval", "set"])
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err
    (line,) = err.splitlines()  # one line for the one bad file; the others are reported as usual
    if command == "check":
        assert [item["image"] for item in json.loads(out)] == good
    else:
        assert "8 images: 4 safe, 4 nsfw" in out and "Sweep" in out
    assert line.startswith("ponybot: set/safe/bad.png: ")
    return line


def through_gallery(data: bytes, request: pytest.FixtureRequest) -> str | None:
    conn: redis.Redis = request.getfixturevalue("conn")
    caplog: pytest.LogCaptureFixture = request.getfixturevalue("caplog")
    tmp_path: Path = request.getfixturevalue("tmp_path")
    engine = make_engine(f"sqlite:///{tmp_path}/gallery.db")
    upgrade(engine)
    store = FolderStore(tmp_path / "images")
    job = hand_over(conn, "pony", count=2)
    conn.set(keys.gallery_image(job.id, 0), data)
    with caplog.at_level(logging.ERROR, logger="gallery.ingest"):
        assert Ingest(engine, store, conn).drain() == 1
    with engine.connect() as db:
        kept = {row.idx for row in db.execute(images.select())}
    engine.dispose()
    assert store.get(file_names(job.id, 1)[0]) is not None  # the good image beside it is kept
    refused = [r.getMessage() for r in caplog.records if "gallery can read" in r.getMessage()]
    if kept == {0, 1}:
        assert not refused
        return None
    assert kept == {1} and len(refused) == 1
    return refused[0]


ENTRY_POINTS: dict[str, Callable[[bytes, pytest.FixtureRequest], str | None]] = {
    "opener": through_opener,
    "bot upload": through_upload,
    "worker source": through_worker,
    "safety check": lambda data, request: safety("check", data, request),
    "safety eval": lambda data, request: safety("eval", data, request),
    "gallery ingest": through_gallery,
}
IN_MEMORY = {"worker source", "gallery ingest"}  #: bytes the bot or a worker wrote (re-encoded: no byte limit)


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("kind", list(BAD))
def test_every_entry_point_refuses_each_bad_image_alike(kind: str, entry: str, request: pytest.FixtureRequest) -> None:
    bad = BAD[kind]
    shown = ENTRY_POINTS[entry](bad.make(), request)
    if entry in IN_MEMORY and not bad.counted:
        assert shown is None  # opened as a picture: its size was checked where it came in
        return
    assert shown is not None and bad.says in shown, shown
    if entry == "opener":
        assert shown.startswith(f"{bad.reason}: ")


def solid_rgb(image: Image.Image) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(image.convert("RGB")).reshape(-1, 3).mean(axis=0).round())


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animation_gives_its_first_frame(fmt: str, conn: redis.Redis) -> None:
    data = frames(fmt, (0, 0, 255), (255, 0, 0), size=(48, 32))
    assert solid_rgb(open_image(data, LIMITS)) == (0, 0, 255)
    png, width, height = inspect(data, fmt, UPLOADS)
    assert (width, height) == (48, 32) and solid_rgb(Image.open(io.BytesIO(png))) == (0, 0, 255)
    job = img2img_job(conn, data)
    _request, start = starting_point(conn, job, None, lambda *_: [], 1024 * 1024, LIMITS)
    assert start is not None and solid_rgb(start) == (0, 0, 255)


def test_exif_orientation_is_applied_once_and_modes_are_normalised() -> None:
    left = Image.new("RGB", (40, 20), (255, 0, 0))
    left.paste((0, 0, 255), (0, 0, 20, 20))  # blue on the left half, red on the right
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: show it rotated 90 degrees clockwise
    out = io.BytesIO()
    left.save(out, format="JPEG", exif=exif, quality=95)
    upright = open_image(out.getvalue(), LIMITS)
    assert upright.size == (20, 40) and upright.mode == "RGB"
    assert 0x0112 not in upright.getexif()  # turned once: nothing downstream turns it again
    top = np.asarray(upright)[:5].reshape(-1, 3).mean(axis=0)
    assert top[2] > 200 and top[0] < 60  # the blue half is now on top
    clear = io.BytesIO()
    Image.new("LA", (8, 8), (128, 0)).save(clear, format="PNG")
    assert open_image(clear.getvalue(), LIMITS).mode == "RGB"
    assert open_image(clear.getvalue(), LIMITS, alpha=True).mode == "RGBA"
    palette = io.BytesIO()
    Image.new("P", (8, 8), 3).save(palette, format="PNG")
    assert open_image(palette.getvalue(), LIMITS, alpha=True).mode == "RGB"


@pytest.mark.parametrize(("name", "reason", "says"), [
    ("missing.png", "missing", "no such file"),
    ("folder.png", "unreadable", "the file cannot be read"),
])
def test_paths_that_are_no_file(tmp_path: Path, name: str, reason: str, says: str) -> None:
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ImageRefusal) as refused:
        open_image(tmp_path / name, LIMITS)
    assert refused.value.reason == reason and says in str(refused.value)


def test_a_file_too_large_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    with path.open("wb") as handle:  # a sparse file: as large as it says, nothing written
        handle.truncate(50 * 1024 * 1024)
    with pytest.raises(ImageRefusal) as refused:
        open_image(path, LIMITS)
    assert (refused.value.reason, refused.value.setting) == ("too_large", "uploads.max_bytes")
    assert "52.4 MB" in str(refused.value)
