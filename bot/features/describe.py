"""``/describe image:``: the worker's image tagger reads a picture into a ready prompt, with a button that runs
``/generate`` with it (``ponybot:describe:generate:<job id>``, working after a restart: the prompt is read back
from Redis). The picture passes the upload checks; the worker applies the channel's policy (in SFW: the
image check first, explicit tags left out), and ``/generate``'s checks apply to the prompt again on the click.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.i18n import MemberError, tp
from bot.jobs import queue_job, read_redis
from bot.replies import guarded
from bot.uploads import PendingUpload, check_declared
from ponybot import keys
from ponybot.member_defaults import MemberDefaultsStore
from ponybot.options import make_request
from ponybot.queue import load_job
from ponybot.schemas import MAX_PROMPT_CHARS, GenerationRequest, JobEvent, JobKind, ResizeMode

if TYPE_CHECKING:
    from bot.client import PonyClient as PonyBot

#: The request's prompt while the job reads the picture (never drawn: the Generate button replaces it).
READING = "describe"


class DescribeButton(discord.ui.DynamicItem[discord.ui.Button[Any]],
                     template=r"ponybot:describe:generate:(?P<job>[\w-]+)"):
    def __init__(self, job_id: str, locale: str = "en-US") -> None:
        super().__init__(discord.ui.Button(label=tp(locale, "button", "Generate with it"), emoji="🎨",
                                           style=discord.ButtonStyle.primary,
                                           custom_id=f"ponybot:describe:generate:{job_id}"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any],
                             match: re.Match[str]) -> DescribeButton:
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await guarded(interaction, generate_described(interaction.client, interaction, self.job_id))


def describe_view(event: JobEvent) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(DescribeButton(event.job.id, event.job.origin.locale if event.job.origin else "en-US"))
    return view


async def generate_described(bot: PonyBot, interaction: discord.Interaction[Any], job_id: str) -> None:
    job = await asyncio.to_thread(load_job, bot.sync_redis, job_id)
    prompt = await bot.redis.get(keys.description(job_id))
    if job is None or prompt is None:
        raise MemberError("This result is too old: its details have expired. Use /generate again.")
    text = prompt.decode() if isinstance(prompt, bytes) else str(prompt)
    request = GenerationRequest.model_validate({**job.request.model_dump(), "prompt": text[:MAX_PROMPT_CHARS]})
    await queue_job(bot, interaction, request, quality=job.quality_tags,
                    ephemeral=job.interaction is not None and job.interaction.ephemeral)


class Describe(commands.Cog):
    def __init__(self, bot: PonyBot) -> None:
        self.bot = bot

    @app_commands.command(name="describe", description="Read a picture into a prompt of booru tags")
    @app_commands.describe(image="The picture to read (PNG, JPEG or WebP)")
    async def describe(self, interaction: discord.Interaction[PonyBot], image: discord.Attachment) -> None:
        settings = self.bot.settings
        check_declared(image.content_type, image.size, settings.uploads)  # before deferring: a quick refusal
        personal = await read_redis(MemberDefaultsStore(self.bot.sync_redis).get, interaction.guild_id,
                                    interaction.user.id)
        # the member's own defaults travel with the job: the Generate button draws the prompt with them
        request = make_request(settings, {"prompt": READING}, personal)
        quality = next(value for value in (personal.quality, settings.defaults.quality) if value is not None)
        await queue_job(self.bot, interaction, request, quality=quality, kind=JobKind.DESCRIBE,
                        upload=PendingUpload(image, 1.0, ResizeMode.JUST_RESIZE), ephemeral=bool(personal.ephemeral))


async def setup(bot: PonyBot) -> None:
    await bot.add_cog(Describe(bot))
