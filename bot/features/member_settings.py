"""``/settings``: a member's own defaults for /generate in this server (channel caps still apply)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands
from pydantic import ValidationError

from bot.features.generate import SizeTransformer, StyleTransformer
from bot.i18n import MemberError, t
from bot.jobs import read_redis
from ponybot.member_defaults import MemberDefaults, MemberDefaultsStore
from ponybot.schemas import Sampler, build_request, parse_size
from ponybot.settings import Settings
from ponybot.styles import Style

if TYPE_CHECKING:
    from bot.client import PonyClient as PonyBot


def describe_defaults(locale: str, mine: MemberDefaults, settings: Settings) -> str:
    """Each option: the member's value, or the bot's default marked as such."""
    operator = settings.defaults
    rows: list[tuple[str, Any, Any]] = [
        ("size", mine.size, operator.size), ("steps", mine.steps, operator.steps),
        ("sampler", mine.sampler.value if mine.sampler else None, operator.sampler.value),
        ("cfg", mine.cfg, operator.cfg), ("clip_skip", mine.clip_skip, operator.clip_skip),
        ("negative_prompt", mine.negative_prompt, operator.negative_prompt or "—"),
        ("quality", mine.quality, operator.quality), ("style", mine.style, "—"),
        ("ephemeral", mine.ephemeral, False),
    ]
    bot_default = t(locale, "bot default")
    return "\n".join(f"**{name}**: `{value}`" if value is not None else f"**{name}**: `{fallback}` ({bot_default})"
                     for name, value, fallback in rows)


def check_defaults(settings: Settings, defaults: MemberDefaults) -> None:
    """Refuse defaults this bot's limits would refuse at /generate time, naming the option."""
    options = defaults.generation_options()
    size = options.pop("size", None)
    width, height = size if isinstance(size, tuple) else parse_size(settings.defaults.size)
    build_request(settings.limits, prompt="check", width=width, height=height, **options)


class MemberSettings(commands.GroupCog, group_name="settings", group_description="Your own defaults for /generate"):
    def __init__(self, bot: PonyBot) -> None:
        self.bot = bot
        super().__init__()

    @property
    def store(self) -> MemberDefaultsStore:
        return MemberDefaultsStore(self.bot.sync_redis)

    async def answer(self, interaction: discord.Interaction[PonyBot], title: str, mine: MemberDefaults) -> None:
        text = describe_defaults(str(interaction.locale), mine, self.bot.settings)
        embed = discord.Embed(title=title, description=text[:4000], colour=0xE39BD9)
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="show", description="Your defaults for /generate")
    async def show(self, interaction: discord.Interaction[PonyBot]) -> None:
        mine = await read_redis(self.store.get, interaction.guild_id, interaction.user.id)
        await self.answer(interaction, t(interaction.locale, "Your defaults"), mine)

    @app_commands.command(name="set", description="Change your defaults (options you leave out stay as they are)")
    @app_commands.describe(size="Width x height", steps="Denoising steps", sampler="The sampling method",
                           cfg="How closely to follow the prompt", clip_skip="CLIP skip (1 or 2)",
                           negative_prompt="Your negative prompt", quality="Add the model card's quality tags",
                           style="One of this server's styles", ephemeral="Post your results only to you")
    async def set(self, interaction: discord.Interaction[PonyBot],
                  size: app_commands.Transform[tuple[int, int], SizeTransformer] | None = None,
                  steps: app_commands.Range[int, 1, 150] | None = None, sampler: Sampler | None = None,
                  cfg: app_commands.Range[float, 1.0, 20.0] | None = None,
                  clip_skip: app_commands.Range[int, 1, 2] | None = None,
                  negative_prompt: app_commands.Range[str, 0, 1000] | None = None, quality: bool | None = None,
                  style: app_commands.Transform[Style, StyleTransformer] | None = None,
                  ephemeral: bool | None = None) -> None:
        changes: dict[str, Any] = {
            "size": f"{size[0]}x{size[1]}" if size else None, "steps": steps, "sampler": sampler, "cfg": cfg,
            "clip_skip": clip_skip, "negative_prompt": negative_prompt, "quality": quality,
            "style": style.name if style else None, "ephemeral": ephemeral,
        }
        changes = {key: value for key, value in changes.items() if value is not None}
        current = await read_redis(self.store.get, interaction.guild_id, interaction.user.id)
        try:
            check_defaults(self.bot.settings, MemberDefaults.model_validate({**current.model_dump(), **changes}))
        except ValidationError as error:
            raise MemberError("not a valid default: {reason}", reason=error.errors()[0]["msg"]) from None
        mine = await read_redis(self.store.update, interaction.guild_id, interaction.user.id, changes)
        await self.answer(interaction, t(interaction.locale, "Your defaults were saved"), mine)

    @app_commands.command(name="reset", description="Forget your defaults: the bot's apply again")
    async def reset(self, interaction: discord.Interaction[PonyBot]) -> None:
        await read_redis(self.store.reset, interaction.guild_id, interaction.user.id)
        await self.answer(interaction, t(interaction.locale, "Your defaults were reset"), MemberDefaults())


async def setup(bot: PonyBot) -> None:
    await bot.add_cog(MemberSettings(bot))
