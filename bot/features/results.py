"""Buttons on results: persistent ``DynamicItem``s whose custom_id carries the job.

``ponybot:result:<action>:<job id>[:<image>]`` (and the queued job's ``ponybot:queue:cancel:<job id>``,
in ``bot.features.queue``) keep working after a restart: the job is read back from Redis when clicked.
Follow-up jobs go through the same checks as ``/generate`` (policy, limits).
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

import discord

from bot.buttons import custom_id
from bot.features.describe import describe_view
from bot.features.edit import add_edit_buttons
from bot.features.gallery import forget_job, gallery_button
from bot.i18n import NP_, MemberError, t, tp
from bot.jobs import queue_job
from bot.replies import guarded, is_moderator
from ponybot import keys
from ponybot.parameters import generate_line
from ponybot.queue import load_job
from ponybot.schemas import Job, JobEvent, JobKind, SourceImage, upscale_size

if TYPE_CHECKING:
    from bot.client import PonyClient as PonyBot

RETRYABLE = {"timeout", "worker_died", "internal", "expired", "out_of_memory"}
ACTIONS = {
    "reroll": (NP_("button", "Re-roll"), discord.ButtonStyle.primary, "🎲"),
    "details": (NP_("button", "Details"), discord.ButtonStyle.secondary, "🔎"),
    "delete": (NP_("button", "Delete"), discord.ButtonStyle.danger, "🗑️"),
    "upscale": (NP_("button", "Upscale"), discord.ButtonStyle.secondary, None),
    "vary": (NP_("button", "Vary"), discord.ButtonStyle.secondary, None),
    "retry": (NP_("button", "Retry"), discord.ButtonStyle.primary, "🔁"),
}


class ResultButton(discord.ui.DynamicItem[discord.ui.Button[Any]],
                   template=r"ponybot:result:(?P<action>[a-z]+):(?P<job>[\w-]+)(?::(?P<index>\d+))?"):
    def __init__(self, action: str, job_id: str, index: int | None = None, *, row: int | None = None,
                 locale: str = "en-US") -> None:
        label, style, emoji = ACTIONS[action]
        label = tp(locale, "button", label)
        shown = f"{label} {index + 1}" if index is not None else label
        super().__init__(discord.ui.Button(label=shown, style=style, emoji=emoji, row=row,
                                           custom_id=custom_id("result", action, job_id, index)))
        self.action, self.job_id, self.index = action, job_id, index

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any],
                             match: re.Match[str]) -> ResultButton:
        if match["action"] not in ACTIONS:
            raise MemberError("This button is from another version of the bot.")
        index = int(match["index"]) if match["index"] is not None else None
        return cls(match["action"], match["job"], index)

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await guarded(interaction, on_result_action(interaction.client, interaction, self.action, self.job_id,
                                                    self.index))


def result_view(event: JobEvent, gallery_url: str | None = None) -> discord.ui.View:
    """Buttons under a result: Re-roll, Details, Delete (and Gallery, a link, when its server has one);
    Upscale and Vary per posted image; Zoom Out and Pan when one image is posted; Retry on failure."""
    view = discord.ui.View(timeout=None)
    job_id = event.job.id
    locale = event.job.origin.locale if event.job.origin else "en-US"
    if event.kind == "failed":
        if event.error_code in RETRYABLE:
            view.add_item(ResultButton("retry", job_id, locale=locale))
        return view
    if event.job.kind is JobKind.DESCRIBE:
        return describe_view(event)
    for action in ("reroll", "details", "delete"):
        view.add_item(ResultButton(action, job_id, row=0, locale=locale))
    if gallery_url:
        view.add_item(gallery_button(gallery_url, locale))
    posted = [image.index for image in event.images if not image.withheld]
    for row, action in ((1, "upscale"), (2, "vary")):
        for index in posted[:5]:
            view.add_item(ResultButton(action, job_id, index, row=row, locale=locale))
    add_edit_buttons(view, event, locale, first_row=3)
    return view


def details(job: Job, locale: Any = "en-US") -> str:
    request = job.request
    seeds = ", ".join(str(job.image_seed(i)) for i in range(request.count))
    command = generate_line(request, job.seed, job.quality_tags)
    quality = t(locale, "on") if job.quality_tags else t(locale, "off")
    cfg = f"{request.cfg:g}"
    lines = [
        t(locale, "**Prompt**: {prompt}", prompt=request.prompt),
        t(locale, "**Negative prompt**: {negative}", negative=request.negative_prompt or "—"),
        t(locale, "Seeds {seeds} · {width}x{height} · {steps} steps · {sampler} · CFG {cfg} · CLIP skip {clip_skip} · "
          "quality tags {quality}", seeds=seeds, width=request.width, height=request.height, steps=request.steps,
          sampler=request.sampler.label, cfg=cfg, clip_skip=request.clip_skip, quality=quality)
        + (" · " + t(locale, "model {model}", model=request.model) if request.model else ""),
    ]
    if job.upload is not None:
        upload = job.upload
        strength = f"{upload.strength:g}"
        lines.append(t(locale, "img2img from `{filename}` ({width}x{height}) · strength {strength} · {mode}",
                       filename=upload.filename, width=upload.width, height=upload.height, strength=strength,
                       mode=upload.resize_mode.value))
    if job.kind is not JobKind.TXT2IMG and job.source:
        label = ACTIONS[job.kind.value][0] if job.kind.value in ACTIONS else NP_("button", "Zoom Out / Pan")
        lines.append(t(locale, "{kind} of image {index} of job `{job}`", kind=tp(locale, "button", label),
                       index=job.source.index + 1, job=job.source.job_id))
    lines += [t(locale, "Job `{job}`", job=job.id), t(locale, "Reproduce:") + f"\n```\n{command}\n```"]
    return "\n".join(lines)


async def on_result_action(bot: PonyBot, interaction: discord.Interaction[Any], action: str, job_id: str,
                           index: int | None) -> None:
    job = await asyncio.to_thread(load_job, bot.sync_redis, job_id)
    if job is None:
        raise MemberError("This result is too old: its details have expired. Use /generate again.")
    if action == "details":
        await interaction.response.send_message(details(job, interaction.locale)[:2000], ephemeral=True)
    elif action == "delete":
        owner = job.origin.user_id if job.origin else None
        if interaction.user.id != owner and not is_moderator(interaction):
            raise MemberError("Only the member who asked for it, or a moderator, can delete it.")
        if interaction.message is not None:
            await interaction.message.delete()
        await forget_job(bot, job.id)
        await interaction.response.send_message(t(interaction.locale, "Deleted."), ephemeral=True)
    elif action in ("retry", "reroll"):
        mask = job.inpaint.mask_key if job.inpaint is not None else None
        if any([job.upload is not None and not await bot.redis.exists(job.upload.key),
                mask is not None and not await bot.redis.exists(mask)]):
            raise MemberError("The picture it started from has expired. Use /generate with it again.")
        request = job.request if action == "retry" else job.request.model_copy(update={"seed": None})
        await queue_job(bot, interaction, request, quality=job.quality_tags, kind=job.kind, source=job.source,
                        upload=job.upload, seed=job.seed if action == "retry" else None,
                        ephemeral=job.interaction is not None and job.interaction.ephemeral,
                        inpaint=job.inpaint, margins=job.margins)
    elif action in ("upscale", "vary") and index is not None:
        key = keys.image(job.id, index)
        if not await bot.redis.exists(key):
            raise MemberError("That image has expired, so it cannot be used any more. Use /generate again.")
        kind = JobKind.UPSCALE if action == "upscale" else JobKind.VARY
        request = job.request.model_copy(update={"count": 1, "seed": None})
        if kind is JobKind.UPSCALE:
            target = upscale_size(request.width, request.height, bot.settings.limits.max_upscale_pixels)
            if target[0] <= request.width:
                raise MemberError("This image is already as large as this bot makes them.")
        source = SourceImage(job_id=job.id, index=index, seed=job.image_seed(index), key=key)
        await queue_job(bot, interaction, request, quality=job.quality_tags, kind=kind, source=source,
                        seed=job.image_seed(index) if kind is JobKind.UPSCALE else None)
