"""Queueing a job for a member: shared by /generate and the result buttons."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import discord
import redis

from bot import messages, needs
from bot.features.queue import queued_view
from bot.i18n import t, t_reason
from bot.uploads import PendingUpload, store_upload
from ponybot import keys
from ponybot.errors import NoWorkerError, PolicyRefusal, RedisUnavailableError
from ponybot.networks import check_lora_count, parse_loras
from ponybot.policy import Decision, apply, resolve
from ponybot.policy_store import PolicyStore
from ponybot.queue import check_fair_share, enqueue, estimate_wait, job_model
from ponybot.schemas import (
    GenerationRequest,
    InpaintSpec,
    InteractionRef,
    Job,
    JobKind,
    Margins,
    Origin,
    SourceImage,
    UploadedImage,
)
from ponybot.workers import check_networks, model_workers

if TYPE_CHECKING:
    from bot.client import PonyClient as PonyBot

log = logging.getLogger(__name__)
T = TypeVar("T")

TOKEN_LIFE = timedelta(minutes=15)


async def read_redis(func: Callable[..., T], *args: Any) -> T:
    """A synchronous Redis read off the event loop; Redis being down becomes the member's message."""
    try:
        return await asyncio.to_thread(func, *args)
    except redis.RedisError as error:
        raise RedisUnavailableError(str(error)) from None


def origin_of(interaction: discord.Interaction[Any]) -> Origin:
    channel = interaction.channel
    nsfw = bool(channel is not None and hasattr(channel, "is_nsfw") and channel.is_nsfw())
    return Origin(guild_id=interaction.guild_id, channel_id=interaction.channel_id or 0, channel_nsfw=nsfw,
                  user_id=interaction.user.id, locale=str(interaction.locale))


def interaction_ref(interaction: discord.Interaction[Any], message_id: int | None, *, ephemeral: bool = False
                    ) -> InteractionRef:
    return InteractionRef(
        id=interaction.id, application_id=interaction.application_id, token=interaction.token,
        expires_at=interaction.created_at + TOKEN_LIFE, message_id=message_id,
        attachment_size_limit=interaction.filesize_limit, ephemeral=ephemeral,
    )


@dataclass(frozen=True)
class Admission:
    """What :func:`admit` found: the policy's decision, the embeddings the prompts name, and whether a
    worker holding the model is online (if not, the job waits for one that starts)."""

    decision: Decision
    embeddings: list[str]
    worker_online: bool = True


def admit(bot: PonyBot, origin: Origin, request: GenerationRequest, quality: bool) -> Admission:
    """The channel's policy, a worker for the model, the LoRAs, the member's share and cooldown, before
    anything is queued (runs in a thread)."""
    store = PolicyStore(bot.sync_redis)
    settings = bot.settings
    limits = settings.limits
    try:
        probe = Job.create(request, origin=origin, loras=[])
        check_fair_share(bot.sync_redis, probe, per_member=limits.max_queued_per_member,
                         per_guild=limits.max_queued_per_guild)
        rules = store.rules_for(origin.guild_id, origin.channel_id)
        policy = resolve(rules, age_restricted=origin.channel_nsfw, settings=settings.policy)
        model = request.model or settings.default_model
        decision = apply(policy, request, quality=quality, safe_tag=settings.policy.safe_tag,
                         model=settings.models.get(model))
        if not decision.allowed:
            if decision.reason is None:  # every refusal names its reason; none goes through without one
                raise PolicyRefusal(t(origin.locale, messages.NOT_ALLOWED))
            raise PolicyRefusal(t(origin.locale, "Not queued: {reason}.", reason=t_reason(origin.locale,
                                                                                          decision.reason)))
        found = model_workers(bot.sync_redis, model, gone_refuse_s=limits.worker_gone_refuse_s)
        if found.records:
            _loras, embeddings = check_networks(found.records, request, settings.model.max_loras)
        elif settings.worker.on_demand or found.state == "coming":
            # queued: a worker is starting (or its job makes one start); that worker checks the LoRAs
            check_lora_count(parse_loras(request.prompt), settings.model.max_loras)
            embeddings = []
        else:
            raise NoWorkerError(t(origin.locale, "Not queued: no worker holding the model **{model}** is online "
                                  "right now. Pick another model, or try again later.", model=model))
        if policy.cooldown_s:
            key = keys.cooldown(origin.guild_id, origin.channel_id, origin.user_id)
            if not bot.sync_redis.set(key, 1, nx=True, ex=policy.cooldown_s):
                wait = bot.sync_redis.ttl(key)
                raise PolicyRefusal(t(origin.locale, "This channel has a cooldown: you can generate again in "
                                      "{seconds} s.", seconds=max(1, int(wait))))
    except redis.RedisError as error:
        raise RedisUnavailableError(str(error)) from None
    return Admission(decision, embeddings, worker_online=bool(found.records))


async def submit(bot: PonyBot, job: Job) -> int:
    """Enqueue (RQ is synchronous: off the event loop) and return the 1-based position."""
    worker = bot.settings.worker
    return await asyncio.to_thread(
        enqueue, bot.sync_redis, job, max_queue=bot.settings.limits.max_queue, result_ttl_s=worker.result_ttl_s,
        max_attempts=worker.max_attempts,
        per_member=bot.settings.limits.max_queued_per_member, per_guild=bot.settings.limits.max_queued_per_guild,
    )


async def queue_job(
    bot: PonyBot, interaction: discord.Interaction[Any], request: GenerationRequest, *, quality: bool,
    kind: JobKind = JobKind.TXT2IMG, source: SourceImage | None = None, seed: int | None = None,
    upload: PendingUpload | UploadedImage | None = None, ephemeral: bool = False,
    inpaint: InpaintSpec | None = None, margins: Margins | None = None,
) -> Job:
    """Check, acknowledge, enqueue, and show the member where the job is.

    A :class:`PendingUpload` is downloaded, checked and stored after the acknowledgement
    (it can take longer than Discord's 3 s); an :class:`UploadedImage` is one already stored.
    """
    origin = origin_of(interaction)
    admission = await asyncio.to_thread(admit, bot, origin, request, quality)
    callback = await interaction.response.defer(thinking=True, ephemeral=ephemeral)
    message_id = callback.message_id if callback is not None else None
    job_id = uuid.uuid4().hex
    if isinstance(upload, PendingUpload):
        upload, inpaint = await store_upload(bot, upload, job_id)
    if upload is not None and kind is not JobKind.DESCRIBE:
        kind = JobKind.INPAINT if inpaint is not None else JobKind.IMG2IMG
    fields: dict[str, Any] = {"id": job_id, "quality_tags": quality, "origin": origin, "kind": kind,
                              "source": source, "upload": upload, "inpaint": inpaint, "margins": margins,
                              "interaction": interaction_ref(interaction, message_id, ephemeral=ephemeral),
                              "embeddings": admission.embeddings, "loras": parse_loras(request.prompt)}
    job = Job.create(request, **fields) if seed is None else Job(request=request, seed=seed, **fields)
    try:
        position = await submit(bot, job)
    except Exception:
        if isinstance(upload, UploadedImage) and upload.key == keys.upload(job_id):
            with contextlib.suppress(redis.RedisError):  # stored for this job only, which was not queued
                await asyncio.to_thread(bot.sync_redis.delete, upload.key, keys.upload_mask(job_id))
        raise
    eta = await asyncio.to_thread(estimate_wait, bot.sync_redis, position, job_model(job))
    log.info("job=%s %s queued by %s in %s at position %d", job.id, kind.value, interaction.user.id,
             interaction.channel_id, position)
    content = messages.queued(origin.locale, position, eta, on_demand=bot.settings.worker.on_demand,
                              waiting_for=None if admission.worker_online else job_model(job))
    await interaction.edit_original_response(content=content,
                                             view=queued_view(job.id, origin.locale))
    bot.tracker.track(job)
    if not ephemeral:
        await warn_cannot_post(interaction, origin.locale)
    return job


async def warn_cannot_post(interaction: discord.Interaction[Any], locale: str) -> None:
    """Tell the member at once when the bot could not post the result in this channel after the token ends
    (the interaction's ``app_permissions`` are the bot's permissions there)."""
    lacking = needs.lacking_here(interaction)
    if not lacking:
        return
    log.info("channel %s: the bot lacks %s", interaction.channel_id, ", ".join(lacking))
    try:
        await interaction.followup.send(messages.cannot_post_later(locale, needs.names(locale, lacking)),
                                        ephemeral=True)
    except discord.HTTPException as failure:
        log.warning("could not warn the member about missing permissions: %s", failure)
