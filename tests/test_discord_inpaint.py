"""Inpaint from Discord: ``/generate image: mask:`` end to end (the real client, the fake's CDN, Redis, the
worker), and the refusals of bad inpaint options and masks, in the member's language, before anything is queued."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import redis
from PIL import Image

from ponybot.parameters import parse_parameters
from ponybot.policy import Mode, PolicyRules
from ponybot.policy_store import PolicyStore
from ponybot.queue import generation_queue
from ponybot.settings import Settings
from tests.bot_harness import drain, ephemeral_reply, running_bot
from tests.discord_fake.server import FakeDiscord
from tests.test_discord_img2img import picture, result_message
from worker.png import read_parameters


def mask_png(size: tuple[int, int], box: tuple[int, int, int, int]) -> bytes:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    out = io.BytesIO()
    mask.save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize(("options", "fields"), [
    ({"inpaint_area": "only_masked", "inpaint_padding": 16, "mask_blur": 2, "strength": 0.9},
     {"Inpaint area": "Only masked", "Masked area padding": "16", "Mask blur": "2", "Denoising strength": "0.9"}),
    ({}, {"Mask blur": "4", "Denoising strength": "0.75"}),  # A1111's defaults: whole picture, blur 4
])
async def test_generate_with_a_mask_redraws_only_under_it(
        options: dict[str, Any], fields: dict[str, str], fake: FakeDiscord, discord_settings: Settings,
        redis_url: str, runtime: Any, conn: redis.Redis) -> None:
    channel = fake.add_channel("art", nsfw=True)
    PolicyStore(conn).set_channel(fake.guild_id, channel, PolicyRules(mode=Mode.NSFW), by=1)
    upload = picture((256, 256))
    async with running_bot(discord_settings, redis_url):
        interaction = await fake.slash("generate", {
            "prompt": "pinkie pie", "seed": 4, "steps": 4, "quality": False, "size": "256x256",
            "image": fake.upload("start.png", upload, "image/png"),
            "mask": fake.upload("mask.png", mask_png((256, 256), (96, 96, 160, 160)), "image/png"), **options,
        }, channel_id=channel)
        await fake.wait_for(lambda: "Queued" in (fake.original(interaction) or {}).get("content", ""))
        await drain(runtime)
        message = await fake.wait_for(lambda: result_message(fake))
    png = fake.attachment_bytes(message)[0]
    parameters = parse_parameters(read_parameters(png) or "")
    assert {key: parameters.get(key) for key in fields} == fields
    assert "from your picture and mask" in message["content"]
    ours = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int32)
    original = np.asarray(Image.open(io.BytesIO(upload)).convert("RGB"), dtype=np.int32)
    assert (ours[:64] == original[:64]).all()  # far from the mask: the original, pixel for pixel
    assert np.abs(ours[128, 128] - original[128, 128]).max() > 0  # under it: redrawn
    assert len(fake.cdn_downloads) == 2  # the picture and the mask, each downloaded once


def text_file(fake: FakeDiscord) -> dict[str, Any]:
    return fake.upload("mask.txt", b"not a mask", "text/plain")


#: (options beyond the prompt, locale, what the member reads)
BAD: list[tuple[Callable[[FakeDiscord], dict[str, Any]], str, str]] = [
    (lambda fake: {"mask": fake.upload("m.png", mask_png((64, 64), (0, 0, 8, 8)), "image/png")}, "en-US",
     "**mask**: a mask paints over a picture: give the picture as image too"),
    (lambda fake: {"mask_blur": 8}, "en-US", "**mask**: mask_blur only apply with a mask"),
    (lambda fake: {"inpaint_area": "only_masked", "inpaint_padding": 8}, "de",
     "inpaint_area, inpaint_padding gilt nur mit einer Maske"),
    (lambda fake: {"image": fake.upload("a.png", picture(), "image/png"), "mask": text_file(fake)}, "fr",
     "seules les images PNG, JPEG ou WebP"),
    (lambda fake: {"image": fake.upload("a.png", picture(), "image/png"), "mask": text_file(fake)}, "en-US",
     "**mask**: only PNG, JPEG or WebP pictures can be used (this file is text/plain)"),
]


@pytest.mark.parametrize(("options", "locale", "expected"), BAD)
async def test_bad_inpaint_options_are_refused_before_queueing(
        options: Callable[[FakeDiscord], dict[str, Any]], locale: str, expected: str, fake: FakeDiscord,
        discord_settings: Settings, redis_url: str, conn: redis.Redis) -> None:
    async with running_bot(discord_settings, redis_url):
        interaction = await fake.slash("generate", {"prompt": "pony", **options(fake)}, locale=locale)
        reply = await fake.wait_for(lambda: ephemeral_reply(fake, interaction))
    assert expected in reply, reply
    assert generation_queue(conn).count == 0
    assert not conn.keys("ponybot:upload*") and fake.cdn_downloads == []
