"""``/generate``: validate, defer, enqueue, tell the member where they are."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.jobs import queue_job
from ponybot.errors import InvalidRequestError
from ponybot.networks import check_lora_count, parse_loras
from ponybot.schemas import MAX_SEED, GenerationRequest, Sampler, Speed, build_request, parse_size
from ponybot.settings import Settings
from ponybot.workers import WorkerRecord, models_online_from, online_workers

if TYPE_CHECKING:
    from bot.app import PonyBot

log = logging.getLogger(__name__)

STANDARD_SIZES = {"square": "512x512", "portrait": "512x768", "landscape": "768x512"}


def size_choices(settings: Settings) -> dict[str, str]:
    """Label -> size: the three standard ones, then the operator's extras."""
    choices = {f"{label} {size}": size for label, size in STANDARD_SIZES.items()}
    choices.update({size: size for size in settings.discord.extra_sizes})
    return choices


class SizeTransformer(app_commands.Transformer):
    """``size``: offered as choices, typed as ``WIDTHxHEIGHT``, checked like the worker checks it."""

    async def autocomplete(  # type: ignore[override]
        self, interaction: discord.Interaction[PonyBot], value: str
    ) -> list[app_commands.Choice[str]]:
        choices = size_choices(interaction.client.settings)
        return [app_commands.Choice(name=label, value=size) for label, size in choices.items()
                if value.lower() in label.lower()][:25]

    async def transform(self, interaction: discord.Interaction[PonyBot], value: str) -> tuple[int, int]:  # type: ignore[override]
        try:
            return parse_size(value)
        except ValueError as error:
            raise InvalidRequestError("size", str(error)) from None


def make_request(settings: Settings, options: dict[str, Any]) -> GenerationRequest:
    """The request from the options a member gave, with the model's and the operator's defaults for the rest."""
    defaults = settings.defaults
    given = {key: value for key, value in options.items() if value is not None}
    width, height = given.pop("size", None) or parse_size(defaults.size)
    model = given.pop("model", None) or settings.default_model
    entry = settings.models.get(model)
    if entry is None:
        raise InvalidRequestError("model", f"there is no model {model!r} here (models: {', '.join(settings.models)})")
    values = {
        "negative_prompt": defaults.negative_prompt if entry.negative_prompt is None else entry.negative_prompt,
        "steps": defaults.steps, "cfg": defaults.cfg, "count": defaults.count, "sampler": defaults.sampler,
        "clip_skip": entry.clip_skip or defaults.clip_skip, "width": width, "height": height, "model": model,
        **given,
    }
    request = build_request(settings.limits, **values)
    check_lora_count(parse_loras(request.prompt), settings.model.max_loras)
    return request


def model_choices(settings: Settings, records: list[WorkerRecord], typed: str) -> list[app_commands.Choice[str]]:
    """The configured models some worker online holds, with their descriptions, matching what was typed."""
    online = models_online_from(records)
    choices = []
    for name, entry in settings.models.items():
        label = f"{name}: {entry.description}" if entry.description else name
        if name in online and typed.lower() in label.lower():
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
        speed: Speed | None = None,
        model: app_commands.Range[str, 1, 40] | None = None,
    ) -> None:
        settings = self.bot.settings
        request = make_request(settings, {
            "prompt": prompt, "negative_prompt": negative_prompt, "seed": seed, "steps": steps, "cfg": cfg,
            "size": size, "count": count, "sampler": sampler, "clip_skip": clip_skip, "speed": speed,
            "model": model,
        })
        await queue_job(self.bot, interaction, request, quality=settings.defaults.quality if quality is None
                        else quality)


    @generate.autocomplete("model")
    async def model_autocomplete(self, interaction: discord.Interaction[PonyBot], value: str
                                 ) -> list[app_commands.Choice[str]]:
        records = await asyncio.to_thread(online_workers, self.bot.sync_redis)
        return model_choices(self.bot.settings, records, value)


async def setup(bot: PonyBot) -> None:
    await bot.add_cog(Generate(bot))
