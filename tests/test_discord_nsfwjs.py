"""The shipped nsfwjs check through the Discord on loopback, offline with an empty hub cache: the tagger cannot
be had, nsfwjs and open_nsfw are here, and they decide. The real model reads the delivered image; forbidding
the class it read (a threshold of 0) withholds the same image, saying so in the member's language, while an
NSFW channel still gets it."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest
import redis
from PIL import Image

from ponybot.policy import Mode, PolicyRules
from ponybot.policy_store import PolicyStore
from ponybot.settings import SafetySettings, Settings
from tests.bot_harness import drain, running_bot
from tests.discord_fake.server import FakeDiscord, Interaction
from worker.nsfwjs import CLASSES, NsfwJs
from worker.runtime import WorkerRuntime
from worker.safety import SafetyCheck, load_safety

WITHHELD = {
    "en-US": "1 image(s) withheld by this channel's safety policy.",
    "de": "1 Bild(er) von den Sicherheitsregeln dieses Kanals zurückgehalten.",
    "fr": "1 image(s) retenue(s) par les règles de sécurité de ce salon.",
}


def offline_check(hub_cache: Path, **settings: Any) -> SafetyCheck:
    """What a worker loads at start on a fresh offline machine: the default settings, an empty hub cache."""
    assert huggingface_hub.constants.HF_HUB_OFFLINE  # conftest: the hub is unreachable
    check = load_safety(SafetySettings(**settings), hub_cache, threads=1)
    assert "tagger" in check.missing and check.state.classifiers == ["nsfwjs", "opennsfw"]
    return check


async def generate(fake: FakeDiscord, runtime: WorkerRuntime, locale: str, channel: int | None = None
                   ) -> dict[str, Any]:
    """One /generate (seed fixed: the same image every time) run by the worker; the member's result message."""
    options = {"channel_id": channel} if channel else {}
    interaction: Interaction = await fake.slash("generate", {"prompt": "pony in a meadow", "seed": 7},
                                                locale=locale, **options)
    await fake.wait_for(lambda: (fake.original(interaction) or {}).get("content"))  # queued, in any language
    await drain(runtime)

    def finished() -> dict[str, Any] | None:
        message = fake.original(interaction)
        done = message and (message["attachments"] or any(text in message["content"] for text in WITHHELD.values()))
        return message if done else None

    result: dict[str, Any] = await fake.wait_for(finished)
    return result


@pytest.mark.parametrize("locale", ["en-US", "de", "fr"])
async def test_sfw_channel_works_offline_and_nsfwjs_decides(
        locale: str, tmp_path: Path, fake: FakeDiscord, discord_settings: Settings, settings: Settings,
        conn: redis.Redis, generator: Any, redis_url: str) -> None:
    runtime = WorkerRuntime(settings, conn, generator, "fresh-offline-host", offline_check(tmp_path / "hub"))
    nsfw_channel = fake.add_channel("after-dark", nsfw=True)
    PolicyStore(conn).set_channel(fake.guild_id, nsfw_channel, PolicyRules(mode=Mode.NSFW), by=1)
    async with running_bot(discord_settings, redis_url):
        delivered = await generate(fake, runtime, locale)
        assert len(delivered["attachments"]) == 1, delivered["content"]
        image = Image.open(io.BytesIO(fake.attachment_bytes(delivered)[0]))
        (scores,) = NsfwJs(SafetySettings(), threads=1).scores([image])
        top = CLASSES[int(scores.argmax())]
        assert scores[CLASSES.index("Hentai")] < 0.5 and scores[CLASSES.index("Porn")] < 0.5
        # a threshold just above what the model read for its top class lets the same image through
        above = min(1.0, float(scores.max()) + 0.01)
        runtime.classifier = offline_check(tmp_path / "hub", nsfwjs_thresholds={top: above})
        again = await generate(fake, runtime, locale)
        # the operator forbids that class outright (a threshold of 0), read by the worker at start
        runtime.classifier = offline_check(tmp_path / "hub", nsfwjs_thresholds={top: 0.0})
        withheld = await generate(fake, runtime, locale)
        nsfw = await generate(fake, runtime, locale, channel=nsfw_channel)
    print(f"nsfwjs read the tiny model's image as {top}: {dict(zip(CLASSES, scores.round(4).tolist(), strict=True))}")
    (again_png,) = fake.attachment_bytes(again)
    assert Image.open(io.BytesIO(again_png)).tobytes() == image.tobytes()  # the same image, posted again
    assert withheld["attachments"] == [] and WITHHELD[locale] in withheld["content"]
    assert len(nsfw["attachments"]) == 1  # NSFW channels are not held to the SFW check
