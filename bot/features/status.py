"""``/status``: workers online, queue depth, recent throughput and the current wait."""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.i18n import t
from bot.jobs import read_redis
from bot.messages import undelivered_count
from ponybot.status import collect_status, describe_status
from ponybot.undelivered import undelivered_counts

if TYPE_CHECKING:
    from bot.client import PonyClient as PonyBot


class Status(commands.Cog):
    def __init__(self, bot: PonyBot) -> None:
        self.bot = bot

    @app_commands.command(name="status", description="How busy the image workers are")
    async def status(self, interaction: discord.Interaction[PonyBot]) -> None:
        status = await asyncio.to_thread(collect_status, self.bot.sync_redis, list(self.bot.settings.models))
        text = describe_status(status, functools.partial(t, interaction.locale))
        if interaction.guild_id is not None:
            counts = await read_redis(undelivered_counts, self.bot.sync_redis, interaction.guild_id)
            lines = [undelivered_count(str(interaction.locale), channel, count) for channel, count in counts.items()]
            text = "\n".join([text, *lines])
        embed = discord.Embed(title=t(interaction.locale, "ponybot status"), description=text, colour=0xE39BD9)
        await interaction.response.send_message(embed=embed, ephemeral=True)


async def setup(bot: PonyBot) -> None:
    await bot.add_cog(Status(bot))
