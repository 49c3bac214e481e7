"""The bot as its features see it: what they may reach on ``interaction.client`` and the bot they are set up on.

Features, delivery, the tracker, jobs and uploads depend on this narrow interface, never on ``bot.app`` (which
imports them all to assemble the client): the imports run one way, app -> features -> client.
"""

from __future__ import annotations

from typing import Protocol

import redis.asyncio as aioredis
from discord.ext import commands
from redis import Redis

from ponybot.connection import Outage, RedisTarget
from ponybot.metrics import BotMetrics
from ponybot.schemas import Job
from ponybot.settings import Settings


class Tracking(Protocol):
    """The progress messages of queued jobs (``bot.tracker.Tracker``)."""

    def track(self, job: Job) -> None: ...

    async def finish(self, job_id: str) -> None: ...


class PonyClient(commands.Bot):
    """The Discord client's state every feature uses; ``bot.app.PonyBot`` builds it."""

    settings: Settings
    redis_target: RedisTarget
    redis: aioredis.Redis
    sync_redis: Redis
    tracker: Tracking
    metrics: BotMetrics

    def outage(self, what: str) -> Outage:
        """How a long-lived loop of the bot rides out Redis going away (it never gives up: it says so once)."""
        return Outage(what, self.settings.redis.outage_patience_s, where=self.redis_target.describe())
