"""``/generate``: validate, defer, enqueue, tell the member where they are."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.i18n import MemberError
from bot.jobs import queue_job, read_redis
from bot.uploads import PendingUpload, check_declared
from ponybot.member_defaults import MemberDefaultsStore
from ponybot.options import make_edit, make_request, size_option
from ponybot.schemas import MAX_INPAINT_PADDING, MAX_MASK_BLUR, MAX_SEED, InpaintArea, ResizeMode, Sampler, Speed
from ponybot.settings import Settings
from ponybot.styles import Style, StyleStore
from ponybot.workers import WorkerRecord, models_online_from, online_workers

if TYPE_CHECKING:
    from bot.client import PonyClient as PonyBot

log = logging.getLogger(__name__)

STANDARD_SIZES = {"square": "512x512", "portrait": "512x768", "landscape": "768x512"}


def size_choices(settings: Settings) -> dict[str, str]:
    """Label -> size: the three standard ones, then the operator's extras."""
    choices = {f"{label} {size}": size for label, size in STANDARD_SIZES.items()}
    choices.update({size: size for size in settings.discord.extra_sizes})
    return choices


class SizeTransformer(app_commands.Transformer):
    """``size``: offered as choices, typed as ``WIDTHxHEIGHT``, checked like the worker checks it."""

    async def autocomplete(  # type: ignore[override, unused-ignore]
        self, interaction: discord.Interaction[PonyBot], value: str
    ) -> list[app_commands.Choice[str]]:
        choices = size_choices(interaction.client.settings)
        return [app_commands.Choice(name=label, value=size) for label, size in choices.items()
                if value.lower() in label.lower()][:25]

    async def transform(self, interaction: discord.Interaction[PonyBot], value: str) -> tuple[int, int]:  # type: ignore[override, unused-ignore]
        return size_option(value)


class StyleTransformer(app_commands.Transformer):
    """``style``: one of this server's styles, offered by autocomplete; unknown names are refused."""

    async def autocomplete(  # type: ignore[override, unused-ignore]
        self, interaction: discord.Interaction[PonyBot], value: str
    ) -> list[app_commands.Choice[str]]:
        if interaction.guild_id is None:
            return []
        styles = await read_redis(StyleStore(interaction.client.sync_redis).all, interaction.guild_id)
        return [app_commands.Choice(name=style.name, value=style.name) for style in styles
                if value.casefold() in style.name.casefold()][:25]

    async def transform(self, interaction: discord.Interaction[PonyBot], value: str) -> Style:  # type: ignore[override, unused-ignore]
        return await find_style(interaction.client, interaction.guild_id, value)


async def find_style(bot: PonyBot, guild_id: int | None, name: str) -> Style:
    style = None if guild_id is None else await read_redis(StyleStore(bot.sync_redis).get, guild_id, name)
    if style is None:
        raise MemberError("this server has no style called {name} (see /style list)", field="style", name=name)
    return style


def model_choices(settings: Settings, records: list[WorkerRecord], typed: str) -> list[app_commands.Choice[str]]:
    """The configured models some worker online holds (all of them with ``worker.on_demand``: a job starts a
    worker), with their descriptions, matching what was typed."""
    online = models_online_from(records)
    choices = []
    for name, entry in settings.models.items():
        label = f"{name}: {entry.description}" if entry.description else name
        if (name in online or settings.worker.on_demand) and typed.lower() in label.lower():
            choices.append(app_commands.Choice(name=label[:100], value=name))
    return choices[:25]


class Generate(commands.Cog):
    def __init__(self, bot: PonyBot) -> None:
        self.bot = bot

    @app_commands.command(name="generate", description="Draw a picture with pony-diffusion")
    @app_commands.describe(
        prompt="What to draw (tags or words; (word:1.3) adds weight)",
        negative_prompt="What to keep out of the picture",
        seed="Same seed + same options = same picture (default: random)",
        steps="Denoising steps: more is slower and often finer",
        cfg="How closely to follow the prompt (7.5 is the model card's)",
        size="Width x height",
        count="How many pictures",
        sampler="The sampling method",
        clip_skip="2 = the model card's advice (penultimate CLIP layer), 1 = last layer",
        quality="Add the model card's quality tags (derpibooru_p_95 / derpibooru_p_low)",
        image="Start from this picture (PNG, JPEG or WebP): img2img",
        strength="With a picture: how much to change it (0.05 = barely, 1 = completely)",
        resize_mode="With a picture: how to fit it to the size",
        mask="With a picture: inpaint where this mask is white (PNG, JPEG or WebP)",
        inpaint_area="With a mask: redraw the whole picture, or only the masked part at full size",
        mask_blur="With a mask: how many pixels its edge is blurred (default 4)",
        inpaint_padding="With inpaint_area only_masked: pixels of context around the mask (default 32)",
        style="One of this server's styles (see /style list)",
        speed="fast: quicker, with a little less fine detail (reuses the model's deep features between steps)",
        model="Which model draws it (those with a worker online)",
    )
    async def generate(
        self,
        interaction: discord.Interaction[PonyBot],
        prompt: app_commands.Range[str, 1, 1000],
        negative_prompt: app_commands.Range[str, 0, 1000] | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        steps: app_commands.Range[int, 1, 150] | None = None,
        cfg: app_commands.Range[float, 1.0, 20.0] | None = None,
        size: app_commands.Transform[tuple[int, int], SizeTransformer] | None = None,
        count: app_commands.Range[int, 1, 4] | None = None,
        sampler: Sampler | None = None,
        clip_skip: app_commands.Range[int, 1, 2] | None = None,
        quality: bool | None = None,
        image: discord.Attachment | None = None,
        strength: app_commands.Range[float, 0.05, 1.0] | None = None,
        resize_mode: ResizeMode | None = None,
        style: app_commands.Transform[Style, StyleTransformer] | None = None,
        speed: Speed | None = None,
        model: app_commands.Range[str, 1, 40] | None = None,
        mask: discord.Attachment | None = None,
        inpaint_area: InpaintArea | None = None,
        mask_blur: app_commands.Range[int, 0, MAX_MASK_BLUR] | None = None,
        inpaint_padding: app_commands.Range[int, 0, MAX_INPAINT_PADDING] | None = None,
    ) -> None:
        settings = self.bot.settings
        personal = await read_redis(MemberDefaultsStore(self.bot.sync_redis).get, interaction.guild_id,
                                    interaction.user.id)
        if style is None and personal.style:
            try:
                style = await find_style(self.bot, interaction.guild_id, personal.style)
            except MemberError:
                raise MemberError("your default style {name} no longer exists on this server: pick another with "
                                  "/settings set, or /settings reset", field="style", name=personal.style) from None
        request = make_request(settings, {
            "prompt": prompt, "negative_prompt": negative_prompt, "seed": seed, "steps": steps, "cfg": cfg,
            "size": size, "count": count, "sampler": sampler, "clip_skip": clip_skip, "speed": speed,
            "model": model,
        }, personal, style)
        strength, resize_mode, inpaint = make_edit(settings, image=image is not None, mask=mask is not None, options={
            "strength": strength, "resize_mode": resize_mode, "inpaint_area": inpaint_area, "mask_blur": mask_blur,
            "inpaint_padding": inpaint_padding})
        upload = None
        if image is not None:  # before deferring: a quick refusal
            check_declared(image.content_type, image.size, settings.uploads)
            if mask is not None:
                check_declared(mask.content_type, mask.size, settings.uploads, "mask")
            upload = PendingUpload(image, strength, resize_mode, mask, inpaint)
        quality_tags = next(value for value in (quality, personal.quality, settings.defaults.quality)
                            if value is not None)
        await queue_job(self.bot, interaction, request, quality=quality_tags, upload=upload,
                        ephemeral=bool(personal.ephemeral))


    @generate.autocomplete("model")
    async def model_autocomplete(self, interaction: discord.Interaction[PonyBot], value: str
                                 ) -> list[app_commands.Choice[str]]:
        records = await asyncio.to_thread(online_workers, self.bot.sync_redis)
        return model_choices(self.bot.settings, records, value)


async def setup(bot: PonyBot) -> None:
    await bot.add_cog(Generate(bot))
