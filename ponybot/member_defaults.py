"""A member's own generation defaults in one server, stored in Redis as pydantic JSON.

Precedence for each option of /generate: what the member typed, then these, then the
operator's ``[defaults]``. The channel's policy caps still apply to the result.
"""

from __future__ import annotations

from typing import Literal

import redis
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ponybot import keys
from ponybot.schemas import MAX_PROMPT_CHARS, Sampler, parse_size


class MemberDefaults(BaseModel):
    """``None``: use the operator's default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: str | None = None
    steps: int | None = Field(None, ge=1, le=150)
    sampler: Sampler | None = None
    cfg: float | None = Field(None, ge=1, le=20)
    clip_skip: Literal[1, 2] | None = None
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    quality: bool | None = None
    style: str | None = Field(None, max_length=50)
    ephemeral: bool | None = None

    @field_validator("size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None:
            width, height = parse_size(value)
            return f"{width}x{height}"
        return value

    def generation_options(self) -> dict[str, object]:
        """The options /generate takes from these defaults (size as (width, height))."""
        options: dict[str, object] = {key: getattr(self, key) for key in
                                      ("steps", "sampler", "cfg", "clip_skip", "negative_prompt")}
        options["size"] = parse_size(self.size) if self.size else None
        return {key: value for key, value in options.items() if value is not None}


class MemberDefaultsStore:
    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn

    def get(self, guild_id: int | None, user_id: int) -> MemberDefaults:
        raw = self.conn.get(keys.member_defaults(guild_id, user_id))
        return MemberDefaults.model_validate_json(raw) if raw else MemberDefaults()

    def update(self, guild_id: int | None, user_id: int, changes: dict[str, object]) -> MemberDefaults:
        """Set the given fields (validated as a whole) and return the member's defaults."""
        current = self.get(guild_id, user_id)
        updated = MemberDefaults.model_validate({**current.model_dump(), **changes})
        self.conn.set(keys.member_defaults(guild_id, user_id), updated.model_dump_json(exclude_none=True))
        return updated

    def reset(self, guild_id: int | None, user_id: int) -> None:
        self.conn.delete(keys.member_defaults(guild_id, user_id))
