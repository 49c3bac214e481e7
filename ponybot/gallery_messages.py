"""What crosses the gallery stream: the bot's posts and the changes the gallery applies (JSON, versioned)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ponybot.schemas import Job, Versioned


class GalleryImage(BaseModel):
    """One posted image handed to the gallery; its PNG waits under ``key`` (a gallery-owned copy)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int
    seed: int
    key: str
    width: int
    height: int
    flagged: bool = False
    tags: list[str] = Field(default_factory=list)  #: the rating tagger's tags, when one ran


class GalleryPost(Versioned):
    """The bot posted these images on Discord: keep them in the gallery."""

    kind: Literal["post"] = "post"
    job: Job
    mode: Literal["sfw", "nsfw"]
    prompt: str  #: as generated (after the policy), for search
    negative_prompt: str = ""
    images: list[GalleryImage]


class GalleryControl(Versioned):
    """A change the gallery applies: a server turned it on or off, a result deleted, a member forgotten."""

    kind: Literal["guild", "delete_job", "forget_member"]
    guild_id: int | None = None
    enabled: bool | None = None
    job_id: str | None = None
    user_id: int | None = None


class GalleryMessage(BaseModel):
    """What crosses the gallery stream (one JSON field ``data``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    item: GalleryPost | GalleryControl = Field(discriminator="kind")
