"""/generate while a worker starts (``ponybot up``, a restart): the job waits for it instead of being refused."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from ponybot import keys
from ponybot.queue import generation_queue
from ponybot.settings import Settings
from tests.bot_harness import bot_settings, drain, ephemeral_reply, running_bot
from tests.discord_fake.server import FakeDiscord

WAITING = {
    "en-US": "Queued: position 1. No worker holding the model **pony-v4** is online right now: your job waits "
             "until one starts.",
    "de": "Eingereiht: Position 1. Gerade ist kein Worker mit dem Modell **pony-v4** online: dein Auftrag wartet, "
          "bis einer startet.",
    "fr": "En file : position 1. Aucun worker avec le modèle **pony-v4** n'est en ligne pour le moment : votre "
          "tâche attend qu'un worker démarre.",
}


def original_content(fake: FakeDiscord, interaction: Any) -> str:
    return str((fake.original(interaction) or {}).get("content") or "")


async def test_generate_during_a_worker_start_is_delivered_once_it_is_up(
        fake: FakeDiscord, settings: Settings, conn: redis.Redis, runtime: Any, redis_url: str) -> None:
    """No worker record at all (a fresh `ponybot up`, the worker still loading its model)."""
    async with running_bot(bot_settings(settings, fake), redis_url):
        interaction = await fake.slash("generate", {"prompt": "pinkie pie", "seed": 4})
        await fake.wait_for(lambda: "Queued" in original_content(fake, interaction))
        assert original_content(fake, interaction) == WAITING["en-US"]
        assert generation_queue(conn).count == 1
        await drain(runtime)  # the worker is up
        result = await fake.wait_for(lambda: next((m for m in fake.messages.values() if m["attachments"]), None))
    assert "pinkie pie" in result["content"] and "seed 4" in result["content"]


@pytest.mark.parametrize(("locale", "gone_s", "expected"), [
    ("de", None, WAITING["de"]),  # never held yet
    ("fr", 30.0, WAITING["fr"]),  # a worker restarting
    ("en-US", 3600.0, "Not queued: no worker holding the model **pony-v4** is online right now. Pick another model, "
                      "or try again later."),  # gone longer than limits.worker_gone_refuse_s (600 s)
])
async def test_waiting_or_refused_by_how_long_the_workers_are_gone(
        locale: str, gone_s: float | None, expected: str, fake: FakeDiscord, settings: Settings, conn: redis.Redis,
        redis_url: str) -> None:
    if gone_s is not None:
        conn.hset(keys.MODELS_LAST_HELD, "pony-v4", time.time() - gone_s)
    async with running_bot(bot_settings(settings, fake), redis_url):
        interaction = await fake.slash("generate", {"prompt": "pony"}, locale=locale)
        text = await fake.wait_for(lambda: ephemeral_reply(fake, interaction) or original_content(fake, interaction))
    assert text == expected
    assert generation_queue(conn).count == (0 if gone_s and gone_s > 600 else 1)


async def test_a_model_nobody_configured_is_refused(fake: FakeDiscord, settings: Settings, conn: redis.Redis,
                                                    redis_url: str) -> None:
    async with running_bot(bot_settings(settings, fake), redis_url):
        interaction = await fake.slash("generate", {"prompt": "pony", "model": "pony-v9"})
        text = await fake.wait_for(lambda: ephemeral_reply(fake, interaction))
    assert text == "**model**: there is no model 'pony-v9' here (models: pony-v4)"
    assert not conn.keys("rq:queue:*")
