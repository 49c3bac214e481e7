"""``/describe``: the image tagger reads a member's picture and answers a prompt made of what it read.

The tags come as the tagger scored them, best first (its general and character tags above
``safety.tag_min_score``, at most ``safety.tags_kept``), written as prompts are typed: underscores as
spaces, parentheses escaped (A1111 would read them as emphasis). In an SFW channel the picture passes
the image check first (failing closed, as any picture a job starts from), and the explicit tags the
tagger watches (``safety.explicit_tags``) and the channel's forbidden terms are left out.
"""

from __future__ import annotations

import redis

from ponybot import keys
from ponybot.errors import GenerationError
from ponybot.images import ImageLimits
from ponybot.policy import EffectivePolicy, Mode
from ponybot.prompt_filter import check_prompt
from ponybot.schemas import Job
from ponybot.settings import Settings
from worker.sources import Screen, read_image


def prompt_tag(tag: str) -> str:
    """A booru tag as a prompt writes it: ``twilight_sparkle_(alicorn)`` -> ``twilight sparkle \\(alicorn\\)``."""
    return tag.replace("_", " ").replace("(", "\\(").replace(")", "\\)")


def ready_prompt(tags: dict[str, float], policy: EffectivePolicy | None, explicit: set[str]) -> str:
    """The tags, best first, as one prompt; in SFW without the explicit tags and the forbidden terms."""
    scored = sorted(tags.items(), key=lambda item: -item[1])
    if policy is not None and policy.mode is Mode.SFW:
        scored = [(tag, score) for tag, score in scored
                  if tag not in explicit and check_prompt(prompt_tag(tag), policy.forbidden_terms).allowed]
    return ", ".join(prompt_tag(tag) for tag, _score in scored)


def describe(conn: redis.Redis, job: Job, policy: EffectivePolicy | None, screen: Screen, settings: Settings) -> str:
    """The ready prompt for the picture of ``job``, also kept for its Generate button (GenerationError when
    it expired, failed the SFW image check, no tagger is loaded, or it read nothing)."""
    limits, explicit = ImageLimits.of(settings.uploads, count_bytes=False), set(settings.safety.explicit_tags)
    if job.upload is None:
        raise GenerationError("invalid_request", "a describe job needs the picture to describe")
    picture = read_image(conn, job.upload.key, limits)
    if picture is None:
        raise GenerationError("expired", "the uploaded picture to describe has expired")
    verdict = screen(job, policy, [picture])[0]
    if policy is not None and policy.mode is Mode.SFW and verdict.flagged is not False:
        raise GenerationError("unsafe_source", "the picture did not pass this channel's image check")
    if not any(reading.rating is not None for reading in verdict.readings):
        raise GenerationError("no_tagger", "no image tagger is loaded on this worker (safety.tagger)")
    prompt = ready_prompt(verdict.tags, policy, explicit)
    if not prompt:
        raise GenerationError("no_tags", "the tagger read no tag it is sure enough of in this picture")
    conn.set(keys.description(job.id), prompt, ex=settings.worker.result_ttl_s)
    return prompt
