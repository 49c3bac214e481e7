"""The prompt and negative prompt a job is generated with."""

from __future__ import annotations

from ponybot.schemas import Job

QUALITY_TAG = "derpibooru_p_95"
QUALITY_NEGATIVE = "derpibooru_p_low"


def join_tags(*parts: str) -> str:
    return ", ".join(part.strip() for part in parts if part and part.strip())


def compose_prompts(job: Job) -> tuple[str, str]:
    """The member's prompt plus, when asked, the model card's quality tags."""
    prompt, negative = job.request.prompt, job.request.negative_prompt
    if job.quality_tags:
        prompt, negative = join_tags(QUALITY_TAG, prompt), join_tags(negative, QUALITY_NEGATIVE)
    return prompt, negative
