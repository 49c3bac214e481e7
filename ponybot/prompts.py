"""The model card's prompt conventions."""

from __future__ import annotations

QUALITY_TAG = "derpibooru_p_95"
QUALITY_NEGATIVE = "derpibooru_p_low"


def join_tags(*parts: str) -> str:
    """Comma-join the non-empty parts, as booru-style prompts are written."""
    return ", ".join(part.strip() for part in parts if part and part.strip())
