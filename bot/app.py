"""The Discord client: endpoints, the command tree, start-up and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
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
from bot.delivery import Delivery
from ponybot.errors import InvalidRequestError, PolicyRefusal, PonybotError, QueueFullError, RedisUnavailableError
from ponybot.queue import resolve_redis_url
from ponybot.redis_server import EmbeddedRedis
from ponybot.settings import Settings

log = logging.getLogger(__name__)

FEATURES = ("bot.features.generate", "bot.features.policy", "bot.features.info")


def configure_endpoints(settings: Settings) -> None:
    """Point discord.py at ``discord.api_base`` and ``discord.gateway_url`` (a proxy, or a fake in tests)."""
    discord.http.Route.BASE = settings.discord.api_base.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord.gateway_url)


def unwrap(error: BaseException) -> BaseException:
    """The exception a command really raised, under discord.py's wrappers."""
    while isinstance(error, (app_commands.CommandInvokeError, app_commands.TransformerError)):
        inner = error.original if isinstance(error, app_commands.CommandInvokeError) else error.__cause__
        if inner is None:
            break
        error = inner
    return error


def describe_error(error: BaseException) -> str | None:
    """A member-facing message for an expected error, or None for a bug."""
    if isinstance(error, InvalidRequestError):
        return f"**{error.field}**: {error.reason}"
    if isinstance(error, RedisUnavailableError):
        return messages.REDIS_DOWN
    if isinstance(error, (QueueFullError, PolicyRefusal, PonybotError)):
        return str(error)
    if isinstance(error, app_commands.CheckFailure):
        return str(error) or "You are not allowed to use this command here."
    return None


class PonyTree(app_commands.CommandTree["PonyBot"]):
    """Every command error ends as an ephemeral message the member can act on."""

    async def on_error(self, interaction: discord.Interaction[PonyBot], error: app_commands.AppCommandError) -> None:
        original = unwrap(error)
        text = describe_error(original)
        if text is None:
            log.error("command %s failed", interaction.command and interaction.command.name, exc_info=original)
            text = "Something went wrong on our side; it has been logged. Please try again."
        await reply_ephemeral(interaction, text)


async def reply_ephemeral(interaction: discord.Interaction[Any], text: str) -> None:
    """Answer ephemerally whether or not the interaction was already deferred (publicly)."""
    try:
        if interaction.response.is_done():
            with contextlib.suppress(discord.HTTPException):
                await interaction.delete_original_response()
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException as failure:
        log.warning("could not tell the member %r: %s", text, failure)


class PonyBot(commands.Bot):
    def __init__(self, settings: Settings, redis_url: str, **options: Any) -> None:
        intents = discord.Intents.default()
        if settings.discord.application_id:
            options.setdefault("application_id", settings.discord.application_id)
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            tree_cls=PonyTree,
            allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, users=True),
            help_command=None,
            **options,
        )
        self.settings = settings
        self.redis_url = redis_url
        self.redis: aioredis.Redis = aioredis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=2)
        # short timeouts: these calls run before the interaction is acknowledged (3 s)
        self.sync_redis: redis.Redis = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=1)
        self.delivery = Delivery(self)

    async def setup_hook(self) -> None:
        for feature in FEATURES:
            await self.load_extension(feature)
        await self.sync_commands()
        self.delivery.start()

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
        await self.delivery.stop()
        await super().close()
        await self.redis.aclose()
        self.sync_redis.close()


def run_bot(settings: Settings) -> None:
    """``ponybot bot``: start (with an embedded Redis when none is configured) and run until stopped."""
    token = settings.require_discord_token()
    configure_endpoints(settings)
    embedded: EmbeddedRedis | None = None
    try:
        redis_url = resolve_redis_url(settings)
    except RedisUnavailableError:
        embedded = EmbeddedRedis(Path(settings.redis.embedded_dir))
        redis_url = embedded.start()
    try:
        bot = PonyBot(settings, redis_url)
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
