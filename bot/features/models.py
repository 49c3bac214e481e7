"""``/loras``: the LoRAs and embeddings this channel may use, from what the workers online hold."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.i18n import t
from bot.jobs import origin_of
from ponybot.policy import EffectivePolicy, resolve
from ponybot.policy_store import PolicyStore
from ponybot.settings import Settings
from ponybot.workers import WorkerRecord, models_online_from, online_workers, usable

if TYPE_CHECKING:
    from bot.client import PonyClient as PonyBot


def describe_networks(settings: Settings, records: list[WorkerRecord], policy: EffectivePolicy,
                      locale: str = "en-US") -> str:
    """Per model online (and allowed here): its usable LoRAs (those the channel allows) and embeddings, in the
    member's language."""
    none = t(locale, "none")
    held = models_online_from(records)
    lines = []
    for model, holders in held.items():
        if model not in settings.models or (policy.models and model not in policy.models):
            continue
        loras = sorted(name for name, problem in usable(holders, "loras").items()
                       if problem is None and (not policy.loras or name in policy.loras))
        embeddings = sorted(name for name, problem in usable(holders, "embeddings").items() if problem is None)
        lines.append(f"**{model}**")
        lines.append(t(locale, "LoRAs: {names}", names=", ".join(f"`{name}`" for name in loras) or none))
        lines.append(t(locale, "Embeddings: {names}", names=", ".join(f"`{name}`" for name in embeddings) or none))
    if not lines:
        return t(locale, "No model this channel may use has a worker online right now.")
    return "\n".join(lines) + "\n\n" + t(locale, "Use a LoRA with `<lora:NAME:0.8>` in the prompt; an embedding "
                                           "by its name.")


class Models(commands.Cog):
    def __init__(self, bot: PonyBot) -> None:
        self.bot = bot

    @app_commands.command(name="loras", description="The LoRAs and embeddings you can use in this channel")
    async def loras(self, interaction: discord.Interaction[PonyBot]) -> None:
        origin = origin_of(interaction)
        rules = await asyncio.to_thread(PolicyStore(self.bot.sync_redis).rules_for, origin.guild_id,
                                        origin.channel_id)
        policy = resolve(rules, age_restricted=origin.channel_nsfw, settings=self.bot.settings.policy)
        records = await asyncio.to_thread(online_workers, self.bot.sync_redis)
        text = describe_networks(self.bot.settings, records, policy, origin.locale)
        embed = discord.Embed(title=t(origin.locale, "LoRAs and embeddings"), description=text[:4000],
                              colour=0xE39BD9)
        await interaction.response.send_message(embed=embed, ephemeral=True)


async def setup(bot: PonyBot) -> None:
    await bot.add_cog(Models(bot))
