"""Buttons on results and queued jobs: persistent ``DynamicItem``s whose custom_id carries the job.

``ponybot:result:<action>:<job id>[:<image>]`` and ``ponybot:queue:cancel:<job id>``
keep working after a restart: the job is read back from Redis when clicked.
Follow-up jobs go through the same checks as ``/generate`` (policy, limits).
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

import discord

from bot.features.gallery import forget_job, gallery_button
from bot.jobs import queue_job
from bot.replies import guarded, is_moderator
from ponybot import keys
from ponybot.errors import PonybotError
from ponybot.parameters import generate_line
from ponybot.queue import load_job
from ponybot.schemas import Job, JobEvent, JobKind, SourceImage, upscale_size

if TYPE_CHECKING:
    from bot.app import PonyBot

RETRYABLE = {"timeout", "worker_died", "internal", "expired", "out_of_memory"}
ACTIONS = {
    "reroll": ("Re-roll", discord.ButtonStyle.primary, "🎲"),
    "details": ("Details", discord.ButtonStyle.secondary, "🔎"),
    "delete": ("Delete", discord.ButtonStyle.danger, "🗑️"),
    "upscale": ("Upscale", discord.ButtonStyle.secondary, None),
    "vary": ("Vary", discord.ButtonStyle.secondary, None),
    "retry": ("Retry", discord.ButtonStyle.primary, "🔁"),
}


def custom_id(feature: str, action: str, job_id: str, index: int | None = None) -> str:
    value = f"ponybot:{feature}:{action}:{job_id}" + (f":{index}" if index is not None else "")
    assert len(value) <= 100, value
    return value


class ResultButton(discord.ui.DynamicItem[discord.ui.Button[Any]],
                   template=r"ponybot:result:(?P<action>[a-z]+):(?P<job>[\w-]+)(?::(?P<index>\d+))?"):
    def __init__(self, action: str, job_id: str, index: int | None = None, *, row: int | None = None) -> None:
        label, style, emoji = ACTIONS[action]
        shown = f"{label} {index + 1}" if index is not None else label
        super().__init__(discord.ui.Button(label=shown, style=style, emoji=emoji, row=row,
                                           custom_id=custom_id("result", action, job_id, index)))
        self.action, self.job_id, self.index = action, job_id, index

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any],
                             match: re.Match[str]) -> ResultButton:
        if match["action"] not in ACTIONS:
            raise PonybotError("this button is from another version of the bot")
        index = int(match["index"]) if match["index"] is not None else None
        return cls(match["action"], match["job"], index)

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await guarded(interaction, on_result_action(interaction.client, interaction, self.action, self.job_id,
                                                    self.index))


class CancelButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"ponybot:queue:cancel:(?P<job>[\w-]+)"):
    def __init__(self, job_id: str) -> None:
        super().__init__(discord.ui.Button(label="Cancel", style=discord.ButtonStyle.secondary,
                                           custom_id=custom_id("queue", "cancel", job_id)))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any],
                             match: re.Match[str]) -> CancelButton:
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        from bot.features.queue import cancel_for_member

        await guarded(interaction, cancel_for_member(interaction.client, interaction, self.job_id))


def queued_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view


def result_view(event: JobEvent, gallery_url: str | None = None) -> discord.ui.View:
    """Buttons under a result: Re-roll, Details, Delete (and Gallery, a link, when its server has one);
    Upscale and Vary per posted image; Retry on failure."""
    view = discord.ui.View(timeout=None)
    job_id = event.job.id
    if event.kind == "failed":
        if event.error_code in RETRYABLE:
            view.add_item(ResultButton("retry", job_id))
        return view
    for action in ("reroll", "details", "delete"):
        view.add_item(ResultButton(action, job_id, row=0))
    if gallery_url:
        view.add_item(gallery_button(gallery_url))
    posted = [image.index for image in event.images if not image.withheld]
    for row, action in ((1, "upscale"), (2, "vary")):
        for index in posted[:5]:
            view.add_item(ResultButton(action, job_id, index, row=row))
    return view


def details(job: Job) -> str:
    request = job.request
    seeds = ", ".join(str(job.image_seed(i)) for i in range(request.count))
    command = generate_line(request, job.seed, job.quality_tags)
    lines = [
        f"**Prompt**: {request.prompt}",
        f"**Negative prompt**: {request.negative_prompt or '—'}",
        f"Seeds {seeds} · {request.width}x{request.height} · {request.steps} steps · {request.sampler.label} · "
        f"CFG {request.cfg:g} · CLIP skip {request.clip_skip} · quality tags {'on' if job.quality_tags else 'off'}"
        + (f" · model {request.model}" if request.model else ""),
    ]
    if job.kind is not JobKind.TXT2IMG and job.source:
        lines.append(f"{job.kind.value.capitalize()} of image {job.source.index + 1} of job `{job.source.job_id}`")
    lines += [f"Job `{job.id}`", f"Reproduce:\n```\n{command}\n```"]
    return "\n".join(lines)


async def on_result_action(bot: PonyBot, interaction: discord.Interaction[Any], action: str, job_id: str,
                           index: int | None) -> None:
    job = await asyncio.to_thread(load_job, bot.sync_redis, job_id)
    if job is None:
        raise PonybotError("This result is too old: its details have expired. Use /generate again.")
    if action == "details":
        await interaction.response.send_message(details(job)[:2000], ephemeral=True)
    elif action == "delete":
        owner = job.origin.user_id if job.origin else None
        if interaction.user.id != owner and not is_moderator(interaction):
            raise PonybotError("Only the member who asked for it, or a moderator, can delete it.")
        if interaction.message is not None:
            await interaction.message.delete()
        await forget_job(bot, job.id)
        await interaction.response.send_message("Deleted.", ephemeral=True)
    elif action == "retry":
        await queue_job(bot, interaction, job.request, quality=job.quality_tags, seed=job.seed)
    elif action == "reroll":
        await queue_job(bot, interaction, job.request.model_copy(update={"seed": None}), quality=job.quality_tags)
    elif action in ("upscale", "vary") and index is not None:
        key = keys.image(job.id, index)
        if not await bot.redis.exists(key):
            raise PonybotError("That image has expired, so it cannot be used any more. Use /generate again.")
        kind = JobKind.UPSCALE if action == "upscale" else JobKind.VARY
        request = job.request.model_copy(update={"count": 1, "seed": None})
        if kind is JobKind.UPSCALE:
            target = upscale_size(request.width, request.height, bot.settings.limits.max_upscale_pixels)
            if target[0] <= request.width:
                raise PonybotError("This image is already as large as this bot makes them.")
        source = SourceImage(job_id=job.id, index=index, seed=job.image_seed(index), key=key)
        await queue_job(bot, interaction, request, quality=job.quality_tags, kind=kind, source=source,
                        seed=job.image_seed(index) if kind is JobKind.UPSCALE else None)
