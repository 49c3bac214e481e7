"""``/help`` and ``/license``: ephemeral, and the license text the model card requires services to show."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.i18n import t
from ponybot.settings import Settings

if TYPE_CHECKING:
    from bot.client import PonyClient as PonyBot

LICENSE_URL = "https://huggingface.co/spaces/CompVis/stable-diffusion-license"

#: CreativeML OpenRAIL-M, Attachment A: the use restrictions every user must be shown.
USE_RESTRICTIONS = (
    "In any way that violates any applicable national, federal, state, local or international law or regulation;",
    "For the purpose of exploiting, harming or attempting to exploit or harm minors in any way;",
    "To generate or disseminate verifiably false information and/or content with the purpose of harming others;",
    "To generate or disseminate personal identifiable information that can be used to harm an individual;",
    "To defame, disparage or otherwise harass others;",
    "For fully automated decision making that adversely impacts an individual's legal rights or otherwise creates "
    "or modifies a binding, enforceable obligation;",
    "For any use intended to or which has the effect of discriminating against or harming individuals or groups "
    "based on online or offline social behavior or known or predicted personal or personality characteristics;",
    "To exploit any of the vulnerabilities of a specific group of persons based on their age, social, physical or "
    "mental characteristics, in order to materially distort the behavior of a person pertaining to that group in a "
    "manner that causes or is likely to cause that person or another person physical or psychological harm;",
    "For any use intended to or which has the effect of discriminating against individuals or groups based on "
    "legally protected characteristics or categories;",
    "To provide medical advice and medical results interpretation;",
    "To generate or disseminate information for the purpose to be used for administration of justice, law "
    "enforcement, immigration or asylum processes, such as predicting an individual will commit fraud/crime "
    "commitment (e.g. by text profiling, drawing causal relationships between assertions made in documents, "
    "indiscriminate and arbitrarily-targeted use).",
)


OPENRAIL = "CreativeML OpenRAIL-M"


def license_embed(settings: Settings, locale: Any = "en-US") -> discord.Embed:
    """Each model's license; the OpenRAIL-M use restrictions once for every model under it."""
    openrail = [name for name, entry in settings.models.items()
                if entry.license_name == OPENRAIL and entry.license_text is None]
    parts = []
    if openrail:
        items = "\n".join(f"**{chr(ord('a') + i)}.** {text}" for i, text in enumerate(USE_RESTRICTIONS))
        parts.append("\n".join([
            t(locale, "Images from **{models}** (Stable Diffusion 1.5 fine-tunes) are made under **{license}**. "
              "By using this bot you agree not to use these models or their outputs (the license's own words, "
              "which bind in English):", models=", ".join(openrail), license=OPENRAIL),
            items,
            t(locale, "Full license: {url}", url=LICENSE_URL),
        ]))
    for name, entry in settings.models.items():
        if name not in openrail:
            licensed = t(locale, "**{name}**: licensed under **{license}**.", name=name, license=entry.license_name)
            parts.append(f"{licensed} {entry.license_text or ''}".strip())
    parts.append(t(locale, "You own the images you generate, and you are responsible for how you use them."))
    return discord.Embed(title=t(locale, "License and use restrictions"), description="\n\n".join(parts)[:4096],
                         colour=0xE39BD9)


def help_embed(locale: Any = "en-US") -> discord.Embed:
    embed = discord.Embed(title="ponybot", colour=0xE39BD9, description=t(
        locale, "Draws pictures with pony-diffusion-v4. Start with `/generate prompt:` and describe what you want."))
    embed.add_field(name=t(locale, "Prompts"), inline=False, value=t(
        locale, "Comma-separated tags work best, e.g. `pinkie pie, smiling, balloons, outdoors`. "
        "`(word:1.3)` or `(word)` adds weight, `[word]` lowers it, `BREAK` starts a new 75-token chunk. "
        "Quality tags are added for you (turn off with `quality: False`)."))
    embed.add_field(name=t(locale, "Options"), inline=False, value=t(
        locale, "`negative_prompt` what to avoid · `seed` to repeat a picture · `steps` · `cfg` · `size` · "
        "`count` up to 4 · `sampler` · `clip_skip` (2 is the model card's advice) · `model` · `image` and "
        "`strength` to start from your own picture · `style` for one of this server's styles"))
    embed.add_field(name=t(locale, "LoRAs and embeddings"), inline=False, value=t(
        locale, "`<lora:NAME:0.8>` in the prompt applies a LoRA (weight -2 to 2, default 1); `/loras` lists them. "
        "An embedding's name in the prompt or negative prompt uses it."))
    embed.add_field(name=t(locale, "Your defaults"), inline=False, value=t(
        locale, "`/settings set` keeps your own defaults (size, steps, sampler, style...) for this server; "
        "what you type in /generate still wins."))
    embed.add_field(name=t(locale, "Channel rules"), inline=False, value=t(
        locale, "Each channel's moderators decide what may be generated there. Images that break a channel's "
        "rules are never posted in it."))
    embed.add_field(name=t(locale, "More"), inline=False, value=t(
        locale, "`/license`: the model's license and use restrictions."))
    return embed


class Info(commands.Cog):
    def __init__(self, bot: PonyBot) -> None:
        self.bot = bot

    @app_commands.command(name="help", description="How to use ponybot")
    async def help(self, interaction: discord.Interaction[PonyBot]) -> None:
        await interaction.response.send_message(embed=help_embed(interaction.locale), ephemeral=True)

    @app_commands.command(name="license", description="The model's license and its use restrictions")
    async def license(self, interaction: discord.Interaction[PonyBot]) -> None:
        await interaction.response.send_message(embed=license_embed(self.bot.settings, interaction.locale),
                                                ephemeral=True)


async def setup(bot: PonyBot) -> None:
    await bot.add_cog(Info(bot))
