"""What members read: every message about a job, in one place, as plain functions, in the member's language."""

from __future__ import annotations

import logging

from bot.i18n import N_, t, t_reason
from ponybot.schemas import JobEvent, JobKind, Speed

log = logging.getLogger(__name__)

FAILURE_REASONS = {
    "out_of_memory": N_("the GPU ran out of memory. Try a smaller size or fewer images."),
    "worker_died": N_("the GPU worker stopped while making it{attempts}. Try again in a few minutes."),
    "timeout": N_("it took longer than this bot allows{attempts}. Try fewer steps or a smaller size."),
    "invalid_request": N_("the worker could not use these options."),
    "expired": N_("the images expired before they could be posted. Please generate them again."),
    "unsafe_source": N_("the image it starts from did not pass this channel's image check, so it was not used."),
    "unreadable_source": N_("the image it starts from could not be opened, so it was not used."),
    "empty_mask": N_("the mask is black all over, so there was nothing to redraw. Paint white where the picture "
                     "should change."),
    "no_tagger": N_("this bot has no image tagger loaded, so it cannot read pictures (the operator can set "
                    "safety.tagger)."),
    "no_tags": N_("the tagger read no tag it is sure enough of in this picture."),
    "internal": N_("an unexpected error in the GPU worker (the operator can find it in the logs by its job id)."),
    "policy": N_("this channel's rules changed while it waited."),
    "model": N_("the worker that took it does not hold this model. Please try again."),
    "lora": N_("a LoRA in the prompt could not be loaded by the worker (the operator can find why in the logs)."),
    "embedding": N_("an embedding in the prompt could not be loaded by the worker (the operator can find why in "
                    "the logs)."),
}
#: What a member reads for a failure of a kind the bot does not know (the details stay in the logs).
UNKNOWN_FAILURE = N_("something went wrong in the GPU worker (the operator can find it in the logs by its job id).")

REDIS_DOWN = N_("The image queue is unreachable right now, so nothing was queued. Please try again in a minute.")
SOMETHING_WRONG = N_("Something went wrong on our side; it has been logged. Please try again.")
NOT_ALLOWED = N_("You are not allowed to use this command here.")


def locale_of(event: JobEvent) -> str:
    return event.job.origin.locale if event.job.origin else "en-US"


def queued(locale: str, position: int, eta_s: float | None, *, waiting_for: str | None = None,
           on_demand: bool = False) -> str:
    """Where a job waits; ``waiting_for``: its model, when no worker online holds it (``on_demand``: the job
    makes one start)."""
    if waiting_for is not None:
        if on_demand:
            return t(locale, "Queued: position {position}. No worker is running yet: one is starting, which can "
                     "take a few minutes.", position=position)
        return t(locale, "Queued: position {position}. No worker holding the model **{model}** is online right now: "
                 "your job waits until one starts.", position=position, model=waiting_for)
    if eta_s is None:
        if position <= 1:
            return t(locale, "Queued: next in line.")
        return t(locale, "Queued: position {position} in the queue.", position=position)
    eta = format_duration(locale, eta_s)
    if position <= 1:
        return t(locale, "Queued: next in line, about {eta}.", eta=eta)
    return t(locale, "Queued: position {position} in the queue, about {eta}.", position=position, eta=eta)


def format_duration(locale: str, seconds: float) -> str:
    if seconds < 90:
        return t(locale, "{seconds} s", seconds=max(1, round(seconds)))
    return t(locale, "{minutes} min", minutes=round(seconds / 60))


def progress(locale: str, step: int, total: int, bar: str) -> str:
    return t(locale, "Generating: step {step} of {total}", step=step, total=total) + f"  {bar}"


def done(event: JobEvent, *, mention: bool) -> str:
    locale = locale_of(event)
    request = event.job.request
    who = f"<@{event.job.origin.user_id}> " if mention and event.job.origin else ""
    if event.job.kind is JobKind.DESCRIBE:  # the prompt read from a picture, ready to copy
        return who + t(locale, "**Prompt read from your picture** (the tags it shows, surest first):") + (
            f"\n```\n{event.prompt}\n```")
    seeds = ", ".join(str(image.seed) for image in event.images if not image.withheld)
    prompt = request.prompt if len(request.prompt) <= 300 else request.prompt[:297] + "..."
    first = next((image for image in event.images if not image.withheld), None)  # follow-ups change the size
    details = t(locale, "seed {seeds} · {width}x{height} · {steps} steps · {sampler} · CFG {cfg} · {seconds} s",
                seeds=seeds or event.job.seed, width=first.width if first else request.width,
                height=first.height if first else request.height, steps=request.steps,
                sampler=request.sampler.label, cfg=format(request.cfg, "g"), seconds=format(event.generation_s, ".1f"))
    if request.speed is Speed.FAST:
        details += " · " + t(locale, "fast")
    lines = [f"{who}**{prompt}**", f"-# {details}"]
    strength = format(event.job.strength, "g")
    if event.job.kind is JobKind.INPAINT:
        lines[1] += " · " + t(locale, "from your picture and mask, strength {strength}", strength=strength)
    elif event.job.upload is not None:
        lines[1] += " · " + t(locale, "from your picture, strength {strength}", strength=strength)
    if event.withheld:
        lines.append(t(locale, "{count} image(s) withheld by this channel's safety policy.", count=event.withheld))
    return "\n".join(lines)


def failed(event: JobEvent, *, mention: bool) -> str:
    locale = locale_of(event)
    who = f"<@{event.job.origin.user_id}> " if mention and event.job.origin else ""
    if event.error_code == "policy" and event.reason is not None:
        reason = t(locale, "this channel's rules changed while it waited: {reason}.",
                   reason=t_reason(locale, event.reason))
    elif event.reason is not None:
        reason = t_reason(locale, event.reason)
    elif event.error_code in FAILURE_REASONS:
        reason = t(locale, FAILURE_REASONS[event.error_code], attempts=attempts_note(locale, event.attempts))
    else:  # the worker's own words are for the operator (it logged them): never a class name to a member
        log.warning("job=%s failed with code %r: %s", event.job.id, event.error_code, event.error_message)
        reason = t(locale, UNKNOWN_FAILURE)
    return who + t(locale, "Sorry, this generation failed: {reason}", reason=reason)


def attempts_note(locale: str, attempts: int) -> str:
    """How often a job was tried, as the end of a clause ("" when not counted)."""
    if attempts <= 0:
        return ""
    if attempts == 1:
        return " " + t(locale, "(tried once)")
    return " " + t(locale, "(tried {count} times)", count=attempts)


def too_large(locale: str, skipped: int) -> str:
    return t(locale, "{count} image(s) were larger than this server's upload limit and were not posted.",
             count=skipped)


def cannot_post_later(locale: str, permissions: str) -> str:
    """At /generate: the bot could not post the result here once the member's 15 minutes are over."""
    return t(locale, "Heads-up: I lack the {permissions} permission in this channel, so if your images take longer "
             "than 15 minutes I cannot post them here. A moderator can grant it in the channel's settings "
             "(Permissions). Your job still runs; if it comes to that, I send the images to you by direct "
             "message.", permissions=permissions)


def undelivered_dm(event: JobEvent, channel_id: int) -> str:
    """The DM a member gets when their result could not be posted in the channel."""
    return t(locale_of(event), "I could not post your images in <#{channel}>: I lack a permission there (a "
             "moderator can grant it). Here they are.", channel=channel_id)


def undelivered_count(locale: str, channel_id: int, count: int) -> str:
    return t(locale, "<#{channel}>: {count} result(s) could not be posted in the last 7 days (the bot lacks a "
             "permission there: see /policy show).", channel=channel_id, count=count)


def missing_in_channel(locale: str, permissions: str) -> str:
    """/policy show: what the bot lacks in this channel."""
    if not permissions:
        return t(locale, "The bot has every permission it needs here.")
    return t(locale, "The bot lacks in this channel: {permissions}. A moderator can grant it in the channel's "
             "settings (Permissions).", permissions=permissions)
