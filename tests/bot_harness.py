"""Run the real ponybot client against the fake Discord, and a worker beside it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from rq.timeouts import TimerDeathPenalty

from bot.app import PonyBot, configure_endpoints
from ponybot.connection import RedisTarget
from ponybot.settings import Settings
from tests.discord_fake.server import FakeDiscord, Interaction
from worker.runner import GenerationWorker
from worker.runtime import WorkerRuntime


def bot_settings(settings: Settings, fake: FakeDiscord, **discord_options: Any) -> Settings:
    section = settings.discord.model_copy(update={"api_base": fake.api_base, "gateway_url": fake.gateway_url,
                                                  **discord_options})
    return settings.model_copy(update={"discord": section})


@contextlib.asynccontextmanager
async def running_bot(settings: Settings, redis_url: RedisTarget | str) -> AsyncIterator[PonyBot]:
    """The real client, logged in through the fake and ready; closed on exit."""
    configure_endpoints(settings)
    bot = PonyBot(settings, redis_url, guild_ready_timeout=0.05)
    await bot.login("fake-token")
    connection = asyncio.create_task(bot.connect(reconnect=False))
    try:
        await asyncio.wait_for(bot.wait_until_ready(), 15)
        yield bot
    finally:
        await bot.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection, 10)


class ThreadWorker(GenerationWorker):
    """The real worker, run in a thread beside the bot's event loop (signals belong to the main thread)."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        pass


async def drain(runtime: WorkerRuntime) -> None:
    """Run the worker until the queue is empty (rq's ``work(burst=True)``)."""
    await asyncio.to_thread(ThreadWorker(runtime).work, burst=True)


def ephemeral_reply(fake: FakeDiscord, interaction: Interaction) -> str | None:
    for message in fake.messages.values():
        if message["_interaction_token"] == interaction.token and message["flags"] & 64:
            content: str = message["content"]
            return content
    return None
