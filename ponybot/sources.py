"""What a job starts from, besides its prompt: a member's uploaded picture, an earlier image, and for inpainting
and outpainting the mask and the margins, as A1111's img2img and inpaint settings name them. Part of the
contract (:mod:`ponybot.schemas` re-exports every name)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class InpaintArea(StrEnum):
    """A1111's "Inpaint area"."""

    WHOLE = "whole"  #: the whole picture at the job's size ("Whole picture")
    ONLY_MASKED = "only_masked"  #: the mask's box plus padding, drawn at the job's size, pasted back ("Only masked")

    @property
    def label(self) -> str:
        """What A1111 writes (``Inpaint area`` is only written for "Only masked")."""
        return {"whole": "Whole picture", "only_masked": "Only masked"}[self.value]


class MaskedContent(StrEnum):
    """What the masked area holds before denoising (A1111's "Masked content")."""

    ORIGINAL = "original"  #: the picture as it is (A1111's inpainting default)
    FILL = "fill"  #: the unmasked colours blurred into it (A1111's outpainting default)


MAX_MASK_BLUR, MAX_INPAINT_PADDING = 64, 256


class InpaintSpec(BaseModel):
    """The mask of an inpaint or outpaint job and how it is used, as A1111's inpaint settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mask_key: str | None = None  #: PNG in Redis (white = redraw); None: the canvas's new area (outpaint)
    area: InpaintArea = InpaintArea.WHOLE
    padding: int = Field(32, ge=0, le=MAX_INPAINT_PADDING)  #: A1111's "Only masked padding, pixels"
    mask_blur: int = Field(4, ge=0, le=MAX_MASK_BLUR)
    content: MaskedContent = MaskedContent.ORIGINAL


class Margins(BaseModel):
    """How far an outpaint job's canvas reaches past its source image on each side, in source pixels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    left: int = Field(0, ge=0)
    top: int = Field(0, ge=0)
    right: int = Field(0, ge=0)
    bottom: int = Field(0, ge=0)


class ResizeMode(StrEnum):
    """How an uploaded picture is fitted to the requested size (A1111's img2img resize modes)."""

    JUST_RESIZE = "just_resize"  #: stretch to the size (A1111's default)
    CROP = "crop"  #: scale to cover the size, crop the overflow ("Crop and resize")
    FILL = "fill"  #: scale to fit inside, fill the bars with stretched edges ("Resize and fill")


MIN_STRENGTH = 0.05


class UploadedImage(BaseModel):
    """A member's uploaded picture, checked and stored by the bot (never a CDN link: those expire)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str  #: PNG bytes in Redis, written by the bot, expiring with the job's record
    filename: str = Field(max_length=200)
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    strength: float = Field(ge=MIN_STRENGTH, le=1.0)
    resize_mode: ResizeMode = ResizeMode.JUST_RESIZE


class SourceImage(BaseModel):
    """The earlier image a follow-up job starts from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    index: int
    seed: int
    key: str
