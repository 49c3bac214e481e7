"""``/queue`` and ``/cancel``: a member's own jobs."""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.buttons import custom_id
from bot.i18n import MemberError, t, tp
from bot.replies import guarded, is_moderator
from ponybot import keys
from ponybot.queue import active_jobs, cancel_job, job_model, load_job, queue_position
from ponybot.schemas import Job, JobStatus

if TYPE_CHECKING:
    from bot.client import PonyClient as PonyBot


class CancelButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"ponybot:queue:cancel:(?P<job>[\w-]+)"):
    def __init__(self, job_id: str, locale: str = "en-US") -> None:
        super().__init__(discord.ui.Button(label=tp(locale, "button", "Cancel"), style=discord.ButtonStyle.secondary,
                                           custom_id=custom_id("queue", "cancel", job_id)))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any],
                             match: re.Match[str]) -> CancelButton:
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await guarded(interaction, cancel_for_member(interaction.client, interaction, self.job_id))


def queued_view(job_id: str, locale: str = "en-US") -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id, locale))
    return view


def member_jobs(bot: PonyBot, guild_id: int | None, user_id: int) -> list[tuple[Job, JobStatus, int | None]]:
    """The member's queued or running jobs, oldest first, with their status and position (in a thread)."""
    listed = []
    for job_id in active_jobs(bot.sync_redis, keys.member_jobs(guild_id, user_id)):
        job = load_job(bot.sync_redis, job_id)
        if job is not None:
            position = queue_position(bot.sync_redis, job_id, job_model(job))
            listed.append((job, JobStatus.QUEUED if position else JobStatus.RUNNING, position))
    return sorted(listed, key=lambda item: (item[2] or 0, item[0].created_at))  # running first, then by place


def where(locale: Any, status: JobStatus, position: int | None) -> str:
    if status is JobStatus.RUNNING:
        return t(locale, "generating now")
    return t(locale, "position {position}", position=position)


def snippet(text: str, size: int = 60) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"


async def cancel_for_member(bot: PonyBot, interaction: discord.Interaction[Any], job_id: str) -> None:
    job = await asyncio.to_thread(load_job, bot.sync_redis, job_id)
    if job is None:
        raise MemberError("That job is already finished.")
    if (job.origin is None or job.origin.user_id != interaction.user.id) and not is_moderator(interaction):
        raise MemberError("Only the member who asked for it, or a moderator, can cancel it.")
    if not await asyncio.to_thread(cancel_job, bot.sync_redis, job_id):
        raise MemberError("It is already being generated, so it can no longer be cancelled.")
    await bot.tracker.finish(job_id)
    ref = job.interaction
    if ref is not None and ref.message_id is not None and ref.alive_for(5):
        hook = discord.Webhook.partial(ref.application_id, ref.token, client=bot)
        locale = job.origin.locale if job.origin else "en-US"
        await hook.edit_message(ref.message_id, content=t(locale, "Cancelled: {prompt}",
                                                          prompt=snippet(job.request.prompt)), view=None)
    await interaction.response.send_message(t(interaction.locale, "Cancelled. It will not be generated."),
                                            ephemeral=True)


class Queue(commands.Cog):
    def __init__(self, bot: PonyBot) -> None:
        self.bot = bot

    @app_commands.command(name="queue", description="Your jobs waiting or being generated")
    async def queue(self, interaction: discord.Interaction[PonyBot]) -> None:
        jobs = await asyncio.to_thread(member_jobs, self.bot, interaction.guild_id, interaction.user.id)
        if not jobs:
            await interaction.response.send_message(t(interaction.locale, "You have no jobs waiting."),
                                                    ephemeral=True)
            return
        locale = interaction.locale
        several = len(self.bot.settings.models) > 1
        lines = [f"**{where(locale, status, position)}**"
                 + (" " + t(locale, "for {model}", model=job.request.model) if several else "")
                 + f": {snippet(job.request.prompt)} (`{job.id[:8]}`)" for job, status, position in jobs]
        await interaction.response.send_message("\n".join(lines), ephemeral=True)

    @app_commands.command(name="cancel", description="Cancel one of your queued jobs (default: the newest)")
    @app_commands.describe(job="Which job (default: your newest one still waiting)")
    async def cancel(self, interaction: discord.Interaction[PonyBot], job: str | None = None) -> None:
        jobs = await asyncio.to_thread(member_jobs, self.bot, interaction.guild_id, interaction.user.id)
        waiting = [item for item, status, _position in jobs if status is JobStatus.QUEUED]
        chosen = next((item for item in waiting if item.id.startswith(job)), None) if job else (
            waiting[-1] if waiting else None)
        if chosen is None:
            if job:
                raise MemberError("No job of yours with that id is waiting.")
            raise MemberError("You have no job waiting that could be cancelled.")
        await cancel_for_member(self.bot, interaction, chosen.id)

    @cancel.autocomplete("job")
    async def cancel_choices(self, interaction: discord.Interaction[PonyBot], value: str
                             ) -> list[app_commands.Choice[str]]:
        jobs = await asyncio.to_thread(member_jobs, self.bot, interaction.guild_id, interaction.user.id)
        return [app_commands.Choice(name=f"{position}. {snippet(job.request.prompt, 80)}", value=job.id)
                for job, status, position in jobs if status is JobStatus.QUEUED and value in job.request.prompt][:25]


async def setup(bot: PonyBot) -> None:
    await bot.add_cog(Queue(bot))
