"""Zoom Out and Pan from Discord, end to end: the real client clicks the buttons on a result (the Discord fake),
the real worker draws the larger canvas with the tiny model, the result comes back with its own buttons."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import redis
from PIL import Image

from ponybot.parameters import parse_parameters
from ponybot.policy import Mode, PolicyRules, Strictness
from ponybot.policy_store import PolicyStore
from ponybot.settings import Settings
from ponybot.status import SafetyState
from tests.bot_harness import drain, running_bot
from tests.discord_fake.server import FakeDiscord
from tests.test_discord_img2img import result_message
from tests.test_policy import FlagAll
from worker.png import read_parameters
from worker.safety import Verdict

#: The blurred seam (A1111's mask blur 4: a kernel 10 px to each side) lies within this many pixels of the original.
SEAM = 12


class PassAll:
    name = "pass-all"
    state = SafetyState(classifiers=["pass-all"])

    def classify(self, images: list[Image.Image], strictness: Strictness = Strictness.STANDARD) -> list[Verdict]:
        return [Verdict(False)] * len(images)


def buttons(message: dict[str, Any]) -> list[str]:
    return [button["custom_id"] for row in message["components"] for button in row["components"]
            if "custom_id" in button]


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int32)


async def first_result(fake: FakeDiscord, runtime: Any, channel: int) -> dict[str, Any]:
    interaction = await fake.slash("generate", {"prompt": "pony", "seed": 5, "steps": 4, "size": "256x256",
                                                "count": 1, "quality": False}, channel_id=channel)
    await fake.wait_for(lambda: "Queued" in (fake.original(interaction) or {}).get("content", ""))
    await drain(runtime)
    message: dict[str, Any] = await fake.wait_for(lambda: result_message(fake))
    return message


async def click_edit(fake: FakeDiscord, runtime: Any, message: dict[str, Any], suffix: str) -> dict[str, Any]:
    """Click the edit button whose custom_id ends in ``suffix``; the answer the member sees once the worker ran."""
    [custom_id] = [c for c in buttons(message) if c.startswith("ponybot:edit:") and c.endswith(suffix)]
    assert len(custom_id) <= 100
    click = await fake.click(int(message["id"]), custom_id)
    await fake.wait_for(lambda: "Queued" in (fake.original(click) or {}).get("content", ""))
    await drain(runtime)
    answer: dict[str, Any] = await fake.wait_for(
        lambda: (found := fake.original(click)) and (found["attachments"] or "failed" in found["content"]) and found)
    return answer


async def test_zoom_out_2x_doubles_the_size_and_keeps_the_original_in_the_middle(
        fake: FakeDiscord, discord_settings: Settings, redis_url: str, runtime: Any, conn: redis.Redis) -> None:
    channel = fake.add_channel("art", nsfw=True)
    PolicyStore(conn).set_channel(fake.guild_id, channel, PolicyRules(mode=Mode.NSFW), by=1)
    async with running_bot(discord_settings, redis_url):
        message = await first_result(fake, runtime, channel)
        assert sum(c.startswith("ponybot:edit:") for c in buttons(message)) == 6  # 2 zooms, 4 pans
        zoomed = await click_edit(fake, runtime, message, ":zoom:" + buttons(message)[0].split(":")[3] + ":0:2")
        # the zoomed result carries its own buttons, Zoom Out and Pan included
        again = await click_edit(fake, runtime, zoomed, ":1.5")
    original = pixels(fake.attachment_bytes(message)[0])
    result = pixels(fake.attachment_bytes(zoomed)[0])
    assert original.shape == (256, 256, 3) and result.shape == (512, 512, 3)
    centre = result[128 + SEAM:384 - SEAM, 128 + SEAM:384 - SEAM]
    assert (centre == original[SEAM:-SEAM, SEAM:-SEAM]).all()
    assert np.abs(result[:64] - result[:64].mean()).max() > 0  # the new border was drawn, not left flat
    parameters = parse_parameters(read_parameters(fake.attachment_bytes(zoomed)[0]) or "")
    assert (parameters["prompt"], parameters["Size"], parameters["Seed"]) == ("pony", "512x512", "5")
    assert parameters["Denoising strength"] == "0.8" and parameters["Mask blur"] == "4"
    assert pixels(fake.attachment_bytes(again)[0]).shape == (768, 768, 3)  # 512 x 1.5


@pytest.mark.parametrize(("direction", "size", "where"), [
    ("left", (384, 256), (128, 0)),  # (width, height) of the result, (x, y) of the original in it
    ("right", (384, 256), (0, 0)),
    ("up", (256, 384), (0, 128)),
    ("down", (256, 384), (0, 0)),
])
async def test_pan_grows_the_canvas_towards_its_direction(
        direction: str, size: tuple[int, int], where: tuple[int, int], fake: FakeDiscord, discord_settings: Settings,
        redis_url: str, runtime: Any, conn: redis.Redis) -> None:
    channel = fake.add_channel("art", nsfw=True)
    PolicyStore(conn).set_channel(fake.guild_id, channel, PolicyRules(mode=Mode.NSFW), by=1)
    async with running_bot(discord_settings, redis_url):
        message = await first_result(fake, runtime, channel)
        panned = await click_edit(fake, runtime, message, f":{direction}")
    original = pixels(fake.attachment_bytes(message)[0])
    result = pixels(fake.attachment_bytes(panned)[0])
    assert (result.shape[1], result.shape[0]) == size
    x, y = where
    kept = result[y:y + 256, x:x + 256]
    # the seam is blurred only on the side the canvas grew; elsewhere the original reaches the edge
    inner = {"left": np.s_[:, SEAM:], "right": np.s_[:, :-SEAM], "up": np.s_[SEAM:, :], "down": np.s_[:-SEAM, :]}
    assert (kept[inner[direction]] == original[inner[direction]]).all()
    assert any("ponybot:edit:pan:" in c for c in buttons(panned))


@pytest.mark.parametrize("suffix", [":2", ":1.5", ":left", ":right", ":up", ":down"])
async def test_sfw_channel_policy_and_image_check_apply_to_each_edit(
        suffix: str, fake: FakeDiscord, discord_settings: Settings, redis_url: str, runtime: Any,
        conn: redis.Redis) -> None:
    channel = fake.add_channel("lobby")  # SFW: the default everywhere
    runtime.classifier = PassAll()
    async with running_bot(discord_settings, redis_url):
        message = await first_result(fake, runtime, channel)
        edited = await click_edit(fake, runtime, message, suffix)
        runtime.classifier = FlagAll()  # the image it starts from no longer passes the image check
        refused = await click_edit(fake, runtime, message, suffix)
    parameters = parse_parameters(read_parameters(fake.attachment_bytes(edited)[0]) or "")
    assert "safe" in parameters["prompt"].split(", ")  # the SFW policy's tag, added again by the worker
    assert refused["attachments"] == []
    assert "the image it starts from did not pass this channel's image check" in refused["content"]
