"""What a member sees for a result, drawn from what the bot really sent: the message JSON the Discord fake
received for a real /generate (the real client, Redis and worker on the tiny model), rendered by
tests/discord_render.py and photographed in headless Chromium. ``make screenshots`` keeps the picture for the
docs (docs/images/discord-result.png)."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import pytest
import redis
from PIL import Image

from ponybot.settings import Settings
from tests.bot_harness import drain, running_bot
from tests.browser import chromium, keep_for_docs, needs_browser
from tests.discord_fake.server import FakeDiscord
from tests.discord_render import render


def result_message(fake: FakeDiscord) -> dict[str, Any] | None:
    return next((m for m in fake.messages.values() if m["attachments"]), None)


def labels(message: dict[str, Any]) -> list[str]:
    return [item.get("label") or "" for row in message["components"] for item in row["components"]]


@pytest.mark.parametrize(("message", "shown", "hidden"), [
    ({"content": "**pinkie pie** <@42>\n-# seed 7 · `256x256`", "attachments": [], "components": []},
     ["<strong>pinkie pie</strong>", '<p class="subtext">seed 7 · <code>256x256</code></p>', "@member"], ["<@42>"]),
    ({"content": "<script>x</script>", "attachments": [], "components": [
        {"type": 1, "components": [{"type": 2, "style": 4, "label": "Delete", "emoji": {"name": "🗑️"}},
                                   {"type": 2, "style": 5, "label": "Gallery", "url": "https://g"}]}]},
     ['<span class="button danger">🗑️ Delete</span>', '<span class="button link">Gallery</span>'], ["<script>"]),
    ({"content": "", "attachments": [], "components": [],
      "embeds": [{"title": "Details", "color": 0x5865F2, "fields": [{"name": "Seed", "value": "7"}]}]},
     ['border-left-color: #5865f2', '<div class="fname">Seed</div>'], []),
])
def test_the_renderer_draws_what_the_json_says(message: dict[str, Any], shown: list[str], hidden: list[str]) -> None:
    page = render(message, [])
    assert all(part in page for part in shown), page
    assert not any(part in page for part in hidden), page


@needs_browser
async def test_a_result_as_a_member_sees_it(fake: FakeDiscord, discord_settings: Settings, redis_url: str,
                                            runtime: Any, conn: redis.Redis) -> None:
    async with running_bot(discord_settings, redis_url):
        interaction = await fake.slash("generate", {"prompt": "pinkie pie, balloons, party", "count": 2,
                                                    "seed": 7, "size": "256x256"})
        await fake.wait_for(lambda: "Queued" in (fake.original(interaction) or {}).get("content", ""))
        await drain(runtime)
        message = await fake.wait_for(lambda: result_message(fake))
    images = fake.attachment_bytes(message)
    page = render(fake.public(message), images)
    for label in labels(message):  # every button the bot sent is drawn, with its label
        assert f"{html.escape(label)}</span>" in page, label
    assert {"Re-roll", "Details", "Delete"} <= set(labels(message))
    assert "<strong>pinkie pie, balloons, party</strong>" in page
    with chromium(800, 900) as browser:
        browser.get("data:text/html;base64," + base64.b64encode(page.encode()).decode())
        drawn = browser.execute_script("return [...document.images].map(i => i.complete && i.naturalWidth)")
        assert drawn == [256, 256]
        png = browser.find_element("id", "message").screenshot_as_png
    picture = Image.open(io.BytesIO(png))
    assert picture.width >= 600 and picture.height >= 300, picture.size
    keep_for_docs("discord-result", png)
