"""The Discord client: endpoints, the command tree, start-up and shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

import discord
import redis
import redis.asyncio as aioredis
import yarl
from discord import app_commands
from discord.ext import commands

from bot import messages
from bot.client import PonyClient
from bot.delivery import Delivery
from bot.features.describe import DescribeButton
from bot.features.edit import EditButton
from bot.features.queue import CancelButton
from bot.features.results import ResultButton
from bot.i18n import CatalogTranslator, t
from bot.needs import INTENTS, invite_url
from bot.replies import describe_error, reply_ephemeral, unwrap
from bot.tracker import Tracker
from ponybot.connection import RedisTarget
from ponybot.errors import RedisUnavailableError
from ponybot.metrics import BotMetrics, serve as serve_metrics
from ponybot.policy import warm_prompt_filter
from ponybot.queue import resolve_redis
from ponybot.redis_server import EmbeddedRedis
from ponybot.settings import Settings

log = logging.getLogger(__name__)

FEATURES = ("bot.features.generate", "bot.features.queue", "bot.features.policy", "bot.features.status",
            "bot.features.info", "bot.features.gallery", "bot.features.styles", "bot.features.member_settings",
            "bot.features.models", "bot.features.describe")


def configure_endpoints(settings: Settings) -> None:
    """Point discord.py at ``discord.api_base`` and ``discord.gateway_url`` (a proxy, or a fake in tests)."""
    discord.http.Route.BASE = settings.discord.api_base.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord.gateway_url)


class PonyTree(app_commands.CommandTree["PonyBot"]):
    """Every command error ends as an ephemeral message the member can act on."""

    async def on_error(self, interaction: discord.Interaction[PonyBot], error: app_commands.AppCommandError) -> None:
        original = unwrap(error)
        text = describe_error(original, interaction.locale)
        if text is None:
            log.error("command %s failed", interaction.command and interaction.command.name, exc_info=original)
            text = t(interaction.locale, messages.SOMETHING_WRONG)
        await reply_ephemeral(interaction, text)


class PonyBot(PonyClient):
    tracker: Tracker

    def __init__(self, settings: Settings, redis_target: RedisTarget | str, **options: Any) -> None:
        if settings.discord.application_id:
            options.setdefault("application_id", settings.discord.application_id)
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=INTENTS,
            tree_cls=PonyTree,
            allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, users=True),
            help_command=None,
            **options,
        )
        self.settings = settings
        target = self.redis_target = RedisTarget.of(redis_target)
        self.redis: aioredis.Redis = target.async_client(socket_timeout=5, socket_connect_timeout=2)
        # short timeouts: these calls run before the interaction is acknowledged (3 s)
        self.sync_redis: redis.Redis = target.client(socket_timeout=2, socket_connect_timeout=1)
        self.delivery = Delivery(self)
        self.tracker = Tracker(self)
        self.metrics = BotMetrics(serve_metrics(settings.metrics.bot_port, self.sync_redis, list(settings.models)))

    async def on_app_command_completion(self, interaction: discord.Interaction[Any], command: Any) -> None:
        self.metrics.commands.labels(command.qualified_name).inc()

    async def setup_hook(self) -> None:
        for feature in FEATURES:
            await self.load_extension(feature)
        self.add_dynamic_items(ResultButton, CancelButton, EditButton, DescribeButton)
        await self.tree.set_translator(CatalogTranslator())
        # the prompt filter's tables now, not in the first member's /generate (a fifth of a second of CPU)
        await asyncio.to_thread(warm_prompt_filter, self.settings.policy)
        await self.sync_commands()
        if self.application_id:
            log.info("invite link (the permissions this bot uses): %s", invite_url(self.application_id))
        self.delivery.start()
        self.tracker.start()

    async def sync_commands(self) -> None:
        guild_ids = self.settings.discord.sync_guilds
        if guild_ids:
            for guild_id in guild_ids:
                guild = discord.Object(guild_id)
                self.tree.copy_global_to(guild=guild)
                await self.tree.sync(guild=guild)
        else:
            await self.tree.sync()
        log.info("commands synced %s", f"to guilds {guild_ids}" if guild_ids else "globally")

    async def close(self) -> None:
        await self.tracker.stop()
        await self.delivery.stop()
        await super().close()
        await self.redis.aclose()
        self.sync_redis.close()


def run_bot(settings: Settings) -> None:
    """``ponybot bot``: start (with an embedded Redis when none is configured) and run until stopped."""
    token = settings.require_discord_token()
    configure_endpoints(settings)
    embedded: EmbeddedRedis | None = None
    target: RedisTarget | str
    try:
        target = resolve_redis(settings)
    except RedisUnavailableError:
        embedded = EmbeddedRedis(Path(settings.redis.embedded_dir))
        target = embedded.start()
    try:
        bot = PonyBot(settings, target)
        asyncio.run(_run(bot, token))
    finally:
        if embedded:
            embedded.stop()


async def _run(bot: PonyBot, token: str) -> None:
    loop = asyncio.get_running_loop()
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(stop_signal, lambda: asyncio.ensure_future(bot.close()))
    async with bot:
        await bot.start(token)
