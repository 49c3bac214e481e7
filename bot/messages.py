"""What members read: every message the bot sends, in one place, as plain functions."""

from __future__ import annotations

from ponybot.schemas import JobEvent, Speed

FAILURE_REASONS = {
    "out_of_memory": "the GPU ran out of memory. Try a smaller size or fewer images.",
    "worker_died": "the GPU worker stopped while making it{attempts}. Try again in a few minutes.",
    "timeout": "it took longer than this bot allows{attempts}. Try fewer steps or a smaller size.",
    "invalid_request": "the worker could not use these options.",
    "expired": "the images expired before they could be posted. Please generate them again.",
    "unsafe_source": "the image it starts from did not pass this channel's image check, so it was not used.",
    "internal": "an unexpected error in the GPU worker (the operator can find it in the logs by its job id).",
}


def queued(position: int, eta_s: float | None) -> str:
    where = "next in line" if position <= 1 else f"position {position} in the queue"
    eta = f", about {format_duration(eta_s)}" if eta_s is not None else ""
    return f"Queued: {where}{eta}."


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    return f"{round(seconds / 60)} min"


def done(event: JobEvent, *, mention: bool) -> str:
    request = event.job.request
    who = f"<@{event.job.origin.user_id}> " if mention and event.job.origin else ""
    seeds = ", ".join(str(image.seed) for image in event.images if not image.withheld)
    prompt = request.prompt if len(request.prompt) <= 300 else request.prompt[:297] + "..."
    lines = [
        f"{who}**{prompt}**",
        f"-# seed {seeds or event.job.seed} · {request.width}x{request.height} · {request.steps} steps · "
        f"{request.sampler.label} · CFG {request.cfg:g}{' · fast' if request.speed is Speed.FAST else ''} · "
        f"{event.generation_s:.1f} s",
    ]
    if event.withheld:
        lines.append(f"{event.withheld} image(s) withheld by this channel's safety policy.")
    return "\n".join(lines)


def failed(event: JobEvent, *, mention: bool) -> str:
    who = f"<@{event.job.origin.user_id}> " if mention and event.job.origin else ""
    if event.error_code == "policy":
        reason = f"this channel's rules changed while it waited: {event.error_message}."
    else:
        reason = FAILURE_REASONS.get(event.error_code or "", event.error_message or "something went wrong.")
        reason = reason.replace("{attempts}", attempts_note(event.attempts))
    return f"{who}Sorry, this generation failed: {reason}"


def attempts_note(attempts: int) -> str:
    """How often a job was tried, as the end of a clause ("" when not counted)."""
    if attempts <= 0:
        return ""
    return " (tried once)" if attempts == 1 else f" (tried {attempts} times)"


def too_large(skipped: int) -> str:
    return f"{skipped} image(s) were larger than this server's upload limit and were not posted."


REDIS_DOWN = "The image queue is unreachable right now, so nothing was queued. Please try again in a minute."
