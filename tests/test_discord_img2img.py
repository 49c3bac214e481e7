"""img2img from a member's upload, end to end: the real client, the Discord fake's CDN, Redis and the worker."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch
from PIL import Image

from ponybot import keys
from ponybot.parameters import parse_parameters
from ponybot.policy import Mode, PolicyRules
from ponybot.policy_store import PolicyStore
from ponybot.queue import generation_queue
from ponybot.settings import Settings
from tests.bot_harness import bot_settings, drain, ephemeral_reply, running_bot
from tests.conftest import announce
from tests.discord_fake.server import FakeDiscord
from tests.test_policy import FlagAll
from worker.png import read_parameters
from worker.schedulers import CARD_DDIM
from worker.tiny import TINY_REVISION


def picture(size: tuple[int, int] = (320, 288), fmt: str = "PNG", noise: bool = False) -> bytes:
    """A smooth picture (or noise, which compresses badly) in ``fmt``."""
    width, height = size
    if noise:
        array = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    else:
        y, x = np.mgrid[0:height, 0:width]
        array = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height) + 64], -1)
    out = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(out, format=fmt)
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` pixels: a decompression bomb's shape."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
            + chunk(b"IEND", b""))


def result_message(fake: FakeDiscord, after: int = 0) -> dict[str, Any] | None:
    return next((m for m in fake.messages.values() if m["attachments"] and int(m["id"]) > after), None)


def plain_img2img(model_cache: Path, image: Image.Image, prompt: str, negative: str, *, strength: float,
                  steps: int, seed: int) -> Any:
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

    folder = model_cache / f"tiny-{TINY_REVISION}"
    plain = StableDiffusionImg2ImgPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    plain.scheduler = DDIMScheduler.from_config(plain.scheduler.config, **CARD_DDIM)
    plain.set_progress_bar_config(disable=True)
    return plain(prompt, negative_prompt=negative, image=image, strength=strength, num_inference_steps=steps,
                 guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images[0]


async def test_uploaded_png_draws_what_plain_diffusers_img2img_draws(
        fake: FakeDiscord, discord_settings: Settings, redis_url: str, runtime: Any, conn: redis.Redis,
        model_cache: Path) -> None:
    # An NSFW channel adds nothing to the prompts: the tiny model's tokenizer spells words out letter by
    # letter, and plain diffusers cuts a prompt at 77 tokens where ponybot encodes every chunk.
    channel = fake.add_channel("art", nsfw=True)
    PolicyStore(conn).set_channel(fake.guild_id, channel, PolicyRules(mode=Mode.NSFW), by=1)
    upload = picture()
    attachment = fake.upload("start.png", upload, "image/png")
    async with running_bot(discord_settings, redis_url):
        interaction = await fake.slash("generate", {"prompt": "pinkie pie", "image": attachment, "strength": 0.6,
                                                    "seed": 11, "steps": 6, "clip_skip": 1, "quality": False},
                                       channel_id=channel)
        await fake.wait_for(lambda: "Queued" in (fake.original(interaction) or {}).get("content", ""))
        stored = conn.keys("ponybot:upload:*")
        assert len(stored) == 1 and 0 < conn.ttl(stored[0]) <= 3600 * 24  # the job record's TTL
        await drain(runtime)
        message = await fake.wait_for(lambda: result_message(fake))
        # Vary of the result drawn from the upload: a follow-up img2img from that image
        click = await fake.click(int(message["id"]), message["components"][2]["components"][0]["custom_id"])
        await fake.wait_for(lambda: "Queued" in (fake.original(click) or {}).get("content", ""))
        await drain(runtime)
        varied = await fake.wait_for(lambda: result_message(fake, after=int(message["id"])))
    assert len(fake.cdn_downloads) == 1  # downloaded once, by the bot; the worker read Redis
    png = fake.attachment_bytes(message)[0]
    parameters = parse_parameters(read_parameters(png) or "")
    assert parameters["Denoising strength"] == "0.6"
    assert parameters["Size"] == "256x256"
    assert (parameters["prompt"], parameters["negative_prompt"]) == ("pinkie pie", "")
    assert "strength 0.6" in message["content"]
    start = Image.open(io.BytesIO(upload)).convert("RGB").resize((256, 256), Image.Resampling.LANCZOS)
    expected = plain_img2img(model_cache, start, parameters["prompt"], parameters["negative_prompt"], strength=0.6,
                             steps=6, seed=11)
    ours = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32) / 255
    assert np.abs(ours - expected).max() <= 1 / 255 + 1e-6
    varied_parameters = parse_parameters(read_parameters(fake.attachment_bytes(varied)[0]) or "")
    assert varied_parameters["Denoising strength"] == "0.6"
    assert varied_parameters["Source"].endswith(":0")


BAD_UPLOADS = {
    "not an image": (lambda: ("notes.txt", b"hello, not a picture", "text/plain"),
                     "only PNG, JPEG or WebP pictures can be used"),
    "lying content type": (lambda: ("pony.png", picture(fmt="JPEG"), "image/png"),
                           "this file says it is PNG but it really is JPEG"),
    "no picture at all": (lambda: ("pony.png", b"%PDF-1.7 not a picture", "image/png"),
                          "not a PNG, JPEG or WebP picture"),
    "too large": (lambda: ("pony.png", picture((640, 640), noise=True), "image/png"), "this bot takes at most 0.1 MB"),
    "too many pixels": (lambda: ("pony.png", png_claiming(5000, 5000), "image/png"), "5000x5000 pixels"),
    "decompression bomb": (lambda: ("pony.png", png_claiming(40000, 40000), "image/png"),
                           "the picture is 40000x40000 pixels; this bot takes at most 16,777,216 pixels"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
async def test_bad_uploads_are_refused_before_queueing(fake: FakeDiscord, settings: Settings, redis_url: str,
                                                       conn: redis.Redis, case: str) -> None:
    make, expected = BAD_UPLOADS[case]
    announce(conn, [settings.default_model])  # a worker for the model: the upload is what gets refused
    strict = bot_settings(settings.model_copy(update={"uploads": settings.uploads.model_copy(
        update={"max_bytes": 100_000})}), fake)
    name, data, content_type = make()
    async with running_bot(strict, redis_url):
        interaction = await fake.slash("generate", {"prompt": "pony", "image": fake.upload(name, data, content_type)})
        reply = await fake.wait_for(lambda: ephemeral_reply(fake, interaction))
    assert reply.startswith("**image**: ") and expected in reply, reply
    assert generation_queue(conn).count == 0
    assert not conn.keys("ponybot:upload:*")


async def test_declared_size_refused_without_downloading(fake: FakeDiscord, discord_settings: Settings,
                                                         redis_url: str, conn: redis.Redis) -> None:
    attachment = fake.upload("big.png", picture(), "image/png", size=50 * 1024 * 1024)
    async with running_bot(discord_settings, redis_url):
        interaction = await fake.slash("generate", {"prompt": "pony", "image": attachment})
        reply = await fake.wait_for(lambda: ephemeral_reply(fake, interaction))
    assert "52.4 MB" in reply and fake.cdn_downloads == []
    assert interaction.callback_type == 4  # refused at once, not deferred


async def test_flagged_upload_refused_in_sfw_channel(fake: FakeDiscord, discord_settings: Settings, redis_url: str,
                                                     runtime: Any, conn: redis.Redis) -> None:
    runtime.classifier = FlagAll()
    async with running_bot(discord_settings, redis_url):
        interaction = await fake.slash("generate", {"prompt": "pony", "image": fake.upload("a.png", picture(),
                                                                                           "image/png")})
        await fake.wait_for(lambda: "Queued" in (fake.original(interaction) or {}).get("content", ""))
        await drain(runtime)
        message = await fake.wait_for(lambda: "failed" in (fake.original(interaction) or {}).get("content", "")
                                      and fake.original(interaction))
    assert "the image it starts from did not pass this channel's image check" in message["content"]
    assert message["attachments"] == []
    assert not conn.keys(keys.image("*", 0))
