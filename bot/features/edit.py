"""Zoom Out and Pan: buttons under a one-image result that draw it again on a larger canvas (an outpaint job).

``ponybot:edit:zoom:<job id>:<image>:<factor>`` and ``ponybot:edit:pan:<job id>:<image>:<direction>`` keep
working after a restart: the job is read back from Redis when clicked. The new job keeps the original's
prompt, model and settings and starts from the image's own seed; the channel's policy is checked again when
it is queued and when it runs, and in an SFW channel the image passes the image check first (worker side).
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

import discord

from bot.i18n import NP_, MemberError, tp
from bot.jobs import queue_job
from bot.replies import guarded
from ponybot import keys
from ponybot.canvas import PAN_DIRECTIONS, ZOOM_FACTORS, Direction, pan_margins, zoom_margins
from ponybot.queue import load_job
from ponybot.schemas import InpaintSpec, Job, JobEvent, JobKind, MaskedContent, SourceImage

if TYPE_CHECKING:
    from bot.client import PonyClient as PonyBot

LABELS = {
    "zoom": NP_("button", "Zoom Out {factor}x"),
    "left": NP_("button", "Pan left"),
    "right": NP_("button", "Pan right"),
    "up": NP_("button", "Pan up"),
    "down": NP_("button", "Pan down"),
}
EMOJI = {"zoom": "🔍", "left": "⬅️", "right": "➡️", "up": "⬆️", "down": "⬇️"}


class EditButton(discord.ui.DynamicItem[discord.ui.Button[Any]],
                 template=r"ponybot:edit:(?P<action>zoom|pan):(?P<job>[\w-]+):(?P<index>\d+):(?P<arg>[a-z0-9.]+)"):
    def __init__(self, action: str, job_id: str, index: int, arg: str, *, row: int | None = None,
                 locale: str = "en-US") -> None:
        label = tp(locale, "button", LABELS["zoom" if action == "zoom" else arg]).replace("{factor}", arg)
        value = f"ponybot:edit:{action}:{job_id}:{index}:{arg}"
        assert len(value) <= 100, value
        super().__init__(discord.ui.Button(label=label, style=discord.ButtonStyle.secondary, row=row,
                                           emoji=EMOJI["zoom" if action == "zoom" else arg], custom_id=value))
        self.action, self.job_id, self.index, self.arg = action, job_id, index, arg

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any],
                             match: re.Match[str]) -> EditButton:
        if match["arg"] not in (ZOOM_FACTORS if match["action"] == "zoom" else PAN_DIRECTIONS):
            raise MemberError("This button is from another version of the bot.")
        return cls(match["action"], match["job"], int(match["index"]), match["arg"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await guarded(interaction, on_edit(interaction.client, interaction, self.action, self.job_id, self.index,
                                           self.arg))


def add_edit_buttons(view: discord.ui.View, event: JobEvent, locale: str, first_row: int) -> None:
    """Zoom Out 1.5x and 2x, then the four Pans, for a result with exactly one posted image."""
    posted = [image.index for image in event.images if not image.withheld]
    if len(posted) != 1:
        return
    for factor in ZOOM_FACTORS:
        view.add_item(EditButton("zoom", event.job.id, posted[0], factor, row=first_row, locale=locale))
    for direction in PAN_DIRECTIONS:
        view.add_item(EditButton("pan", event.job.id, posted[0], direction, row=first_row + 1, locale=locale))


async def on_edit(bot: PonyBot, interaction: discord.Interaction[Any], action: str, job_id: str, index: int,
                  arg: str) -> None:
    job = await asyncio.to_thread(load_job, bot.sync_redis, job_id)
    if job is None:
        raise MemberError("This result is too old: its details have expired. Use /generate again.")
    key = keys.image(job.id, index)
    header = await asyncio.to_thread(bot.sync_redis.getrange, key, 0, 23)  # b"" once it expired
    if not header:
        raise MemberError("That image has expired, so it cannot be used any more. Use /generate again.")
    width, height = image_size(job, header if isinstance(header, bytes) else b"")
    direction: Direction = arg  # type: ignore[assignment,unused-ignore]  # checked against PAN_DIRECTIONS by the template
    margins = zoom_margins(width, height, float(arg)) if action == "zoom" else pan_margins(width, height, direction)
    # the request keeps the original's prompt and settings at the image's own size; the worker draws the canvas
    request = job.request.model_copy(update={"count": 1, "seed": None})
    source = SourceImage(job_id=job.id, index=index, seed=job.image_seed(index), key=key)
    await queue_job(bot, interaction, request, quality=job.quality_tags, kind=JobKind.OUTPAINT, source=source,
                    seed=job.image_seed(index), inpaint=InpaintSpec(content=MaskedContent.FILL), margins=margins)


def image_size(job: Job, png: bytes) -> tuple[int, int]:
    """The posted image's size, from its PNG header (an upscale or an earlier zoom is larger than its request)."""
    if png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR":
        return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    return job.request.width, job.request.height
