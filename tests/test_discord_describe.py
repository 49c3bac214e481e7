"""``/describe``: the worker's tagger (the test tagger, tests/tagger.py) reads a picture made for the test into a
ready prompt, best tags first; in an SFW channel without explicit tags and after the image check; its button
runs /generate with that prompt."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import redis
from PIL import Image

from ponybot.parameters import parse_parameters
from ponybot.policy import Mode, PolicyRules
from ponybot.policy_store import PolicyStore
from ponybot.prompts import QUALITY_TAG
from ponybot.queue import generation_queue
from ponybot.settings import SafetySettings, Settings
from tests.bot_harness import drain, ephemeral_reply, running_bot
from tests.discord_fake.server import FakeDiscord
from tests.tagger import make_tagger
from tests.test_discord_edit import PassAll
from tests.test_discord_img2img import result_message
from tests.test_policy import FlagAll
from worker.png import read_parameters
from worker.safety import load_safety

#: row -> (category, weight of red, green, blue): on the solid colour (200, 150, 100) below, pony scores
#: 0.88, solo 0.71, twilight_sparkle_(alicorn) 0.59 (a character), nude 0.39 (general, watched as explicit at
#: 0.4: not enough to flag), sky 0.12 (under safety.tag_min_score, 0.35); every rating but general 0.
ROWS = {
    "general": (9, 0.5, 0.5, 0.5), "sensitive": (9, 0.0, 0.0, 0.0), "questionable": (9, 0.0, 0.0, 0.0),
    "explicit": (9, 0.0, 0.0, 0.0), "sky": (0, 0.0, 0.0, 0.3), "nude": (0, 0.0, 0.0, 1.0),
    "twilight_sparkle_(alicorn)": (4, 0.0, 1.0, 0.0), "solo": (0, 0.9, 0.0, 0.0), "pony": (0, 0.5, 0.5, 0.5),
}
COLOUR = (200, 150, 100)
READ = "pony, solo, twilight sparkle \\(alicorn\\)"


@pytest.fixture(scope="module")
def tagger(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = make_tagger(tmp_path_factory.mktemp("tagger") / "wd", ROWS)
    return load_safety(SafetySettings(tagger=str(folder), opennsfw=False), Path(folder), fail_fast=True)


def solid_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (96, 96), COLOUR).save(out, format="PNG")  # square: the tagger pads with white
    return out.getvalue()


@pytest.mark.parametrize(("nsfw", "locale", "prompt"), [
    (True, "en-US", READ + ", nude"),  # every tag over the tagger's minimum, surest first
    (False, "de", READ),  # SFW: the explicit tag left out
    (False, "fr", READ),
])
async def test_describe_answers_the_surest_tags_and_generates_with_them(
        nsfw: bool, locale: str, prompt: str, fake: FakeDiscord, discord_settings: Settings, redis_url: str,
        runtime: Any, conn: redis.Redis, tagger: Any) -> None:
    runtime.classifier = tagger
    channel = fake.add_channel("art", nsfw=nsfw)
    if nsfw:
        PolicyStore(conn).set_channel(fake.guild_id, channel, PolicyRules(mode=Mode.NSFW), by=1)
    async with running_bot(discord_settings, redis_url):
        interaction = await fake.slash("describe", {"image": fake.upload("p.png", solid_png(), "image/png")},
                                       channel_id=channel, locale=locale)
        await fake.wait_for(lambda: (fake.original(interaction) or {}).get("components"))
        await drain(runtime)
        answer = await fake.wait_for(lambda: (m := fake.original(interaction)) and "```" in m["content"] and m)
        assert f"```\n{prompt}\n```" in answer["content"]
        [custom_id] = [b["custom_id"] for row in answer["components"] for b in row["components"]]
        assert custom_id.startswith("ponybot:describe:generate:") and len(custom_id) <= 100
        runtime.classifier = PassAll()  # the drawn image's own check is not under test (random tiny weights)
        click = await fake.click(int(answer["id"]), custom_id)
        await fake.wait_for(lambda: (fake.original(click) or {}).get("components"))
        await drain(runtime)
        drawn = await fake.wait_for(lambda: result_message(fake, after=int(answer["id"])))
    parameters = parse_parameters(read_parameters(fake.attachment_bytes(drawn)[0]) or "")
    # the member's defaults (quality tags on) and the SFW policy apply again to the prompt read
    assert parameters["prompt"] == ("" if nsfw else "safe, ") + f"{QUALITY_TAG}, {prompt}"


async def test_describe_in_sfw_checks_the_picture_first(
        fake: FakeDiscord, discord_settings: Settings, redis_url: str, runtime: Any, conn: redis.Redis) -> None:
    runtime.classifier = FlagAll()
    async with running_bot(discord_settings, redis_url):
        interaction = await fake.slash("describe", {"image": fake.upload("p.png", solid_png(), "image/png")})
        await fake.wait_for(lambda: (fake.original(interaction) or {}).get("components"))
        await drain(runtime)
        answer = await fake.wait_for(lambda: (m := fake.original(interaction)) and "failed" in m["content"] and m)
    assert "did not pass this channel's image check" in answer["content"] and "```" not in answer["content"]


async def test_describe_refuses_what_is_no_picture(fake: FakeDiscord, discord_settings: Settings, redis_url: str,
                                                   conn: redis.Redis) -> None:
    async with running_bot(discord_settings, redis_url):
        interaction = await fake.slash("describe", {"image": fake.upload("a.txt", b"words", "text/plain")})
        reply = await fake.wait_for(lambda: ephemeral_reply(fake, interaction))
    assert "only PNG, JPEG or WebP pictures can be used" in reply
    assert generation_queue(conn).count == 0
