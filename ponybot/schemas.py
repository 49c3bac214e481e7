"""The contract: what crosses Redis between bot and worker, as JSON pydantic models.

Nothing else crosses: no pickle, so whoever can write to Redis cannot make a
worker run code. Every model carries :data:`SCHEMA_VERSION`; a bot and a worker
of different versions refuse each other's messages with a SchemaVersionError.
"""

from __future__ import annotations

import base64
import secrets
import unicodedata
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ponybot.errors import N_, InvalidRequestError, Reason, SchemaVersionError, reason
from ponybot.keys import MODEL_NAME_PATTERN
from ponybot.networks import LoraRef, parse_loras
from ponybot.sources import (  # re-exported: the contract's one import for a job's parts
    MAX_INPAINT_PADDING as MAX_INPAINT_PADDING,
    MAX_MASK_BLUR as MAX_MASK_BLUR,
    MIN_STRENGTH as MIN_STRENGTH,
    InpaintArea as InpaintArea,
    InpaintSpec as InpaintSpec,
    Margins as Margins,
    MaskedContent as MaskedContent,
    ResizeMode as ResizeMode,
    SourceImage as SourceImage,
    UploadedImage as UploadedImage,
)

SCHEMA_VERSION = 1
MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 1000
MIN_SIDE, MAX_SIDE, SIDE_STEP = 256, 1024, 64


class Sampler(StrEnum):
    DDIM = "ddim"
    EULER_A = "euler_a"
    DPMPP_2M_KARRAS = "dpmpp_2m_karras"

    @property
    def label(self) -> str:
        """The name A1111 shows, used in PNG metadata."""
        return {"ddim": "DDIM", "euler_a": "Euler a", "dpmpp_2m_karras": "DPM++ 2M Karras"}[self.value]


class Speed(StrEnum):
    """How the UNet runs: every step in full, or DeepCache-style reuse of its deep features."""

    NORMAL = "normal"
    FAST = "fast"  #: the full UNet every few steps, only its shallowest blocks in between (worker/deepcache.py)


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


def image_seed(seed: int, index: int) -> int:
    """Image ``index`` of a job seeded ``seed``: ``(seed + index) mod 2**32``, always a valid ``--seed``."""
    return (seed + index) % (MAX_SEED + 1)


def utcnow() -> datetime:
    return datetime.now(UTC)


def read_size(text: str) -> tuple[int, int] | Reason:
    """``"512x768"`` -> ``(512, 768)``, or why not (a catalog message the bot writes in the member's language)."""
    try:
        width, height = (int(part) for part in text.lower().replace(" ", "").split("x"))
    except ValueError:
        return reason(N_("must look like 512x768, got {value}"), value=shorten(text))
    return side_problem(width) or side_problem(height) or (width, height)


def side_problem(value: int) -> Reason | None:
    if not MIN_SIDE <= value <= MAX_SIDE or value % SIDE_STEP:
        return reason(N_("must be a multiple of {step} from {low} to {high}, got {value}"), step=SIDE_STEP,
                      low=MIN_SIDE, high=MAX_SIDE, value=value)
    return None


def parse_size(text: str) -> tuple[int, int]:
    """``"512x768"`` -> ``(512, 768)``; the sides must pass :func:`check_side` (ValueError in English)."""
    size = read_size(text)
    if isinstance(size, Reason):
        raise ValueError(str(size))
    return size


def check_side(value: int) -> int:
    if problem := side_problem(value):
        raise ValueError(str(problem))
    return value


#: Line and paragraph separators other than ``\n``: text tools split lines on them too.
_LINE_BREAKS = {"Zl", "Zp"}


def check_text(value: str) -> str:
    """Refuse control characters (plain newlines and tabs are fine): they could forge the PNG metadata."""
    for position, char in enumerate(value):
        if char in "\n\t":
            continue
        if unicodedata.category(char) == "Cc" or unicodedata.category(char) in _LINE_BREAKS:
            raise ValueError(
                f"contains the control character U+{ord(char):04X} at position {position + 1}: "
                "use plain text (line breaks are fine)"
            )
    return value


def shorten(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, so an error never echoes a whole 10,000-character prompt."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}...({len(text):,} characters)"


class Versioned(BaseModel):
    """Base of every model that crosses Redis."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION

    @field_validator("schema_version")
    @classmethod
    def _same_version(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise SchemaVersionError(
                f"message written with ponybot schema v{value}, this process speaks v{SCHEMA_VERSION}: "
                "run the same ponybot version on the bot and every worker"
            )
        return value


class GenerationRequest(BaseModel):
    """What a member asked for. Bounds that depend on settings are in :func:`check_limits`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    steps: int = Field(25, ge=1, le=150)
    cfg: float = Field(7.5, ge=1, le=20)
    width: int = 512
    height: int = 512
    count: int = Field(1, ge=1, le=4)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    sampler: Sampler = Sampler.DDIM
    clip_skip: Literal[1, 2] = 2
    speed: Speed = Speed.NORMAL
    model: str | None = Field(None, pattern=f"^{MODEL_NAME_PATTERN}$")  #: None: the worker's default model

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _plain_text(cls, value: str) -> str:
        return check_text(value)

    @field_validator("width", "height")
    @classmethod
    def _side(cls, value: int) -> int:
        return check_side(value)


class RequestLimits(Protocol):
    """The operator's limits a request is checked against (``ponybot.settings.LimitSettings``)."""

    @property
    def max_steps(self) -> int: ...

    @property
    def max_count(self) -> int: ...

    @property
    def max_pixels(self) -> int: ...


def check_limits(request: GenerationRequest, limits: RequestLimits) -> GenerationRequest:
    """Refuse what the operator's limits forbid, naming the option."""
    if request.steps > limits.max_steps:
        raise InvalidRequestError("steps", N_("at most {limit} on this bot, got {value}"), limit=limits.max_steps,
                                  value=request.steps)
    if request.count > limits.max_count:
        raise InvalidRequestError("count", N_("at most {limit} on this bot, got {value}"), limit=limits.max_count,
                                  value=request.count)
    if request.width * request.height > limits.max_pixels:
        raise InvalidRequestError(
            "size", N_("{width}x{height} is over this bot's budget of {pixels} pixels (768x768 by default)"),
            width=request.width, height=request.height, pixels=format(limits.max_pixels, ","),
        )
    return request


def build_request(limits: RequestLimits, **options: Any) -> GenerationRequest:
    """Validate options from a command line or a slash command into a request."""
    try:
        request = GenerationRequest(**options)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "request"
        given = first.get("input")
        if field in ("width", "height") and isinstance(given, int) and (problem := side_problem(given)):
            raise InvalidRequestError(field, problem.message, **problem.params) from None
        # pydantic's own words (English): options Discord already keeps in range, or the CLI's
        raise InvalidRequestError(field, N_("{problem} (got {value})"), problem=first["msg"].removeprefix(
            "Value error, "), value=shorten(given)) from None
    return check_limits(request, limits)


class Origin(BaseModel):
    """Where a job came from on Discord."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    guild_id: int | None
    channel_id: int
    channel_nsfw: bool
    user_id: int
    locale: str = "en-US"  #: the member's Discord locale: messages about the job are written in it


class InteractionRef(BaseModel):
    """Enough of the interaction to edit its response while the token lives."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int
    application_id: int
    token: str
    expires_at: datetime
    message_id: int | None = None  #: the deferred response, edited with the result
    attachment_size_limit: int = 10 * 1024 * 1024
    ephemeral: bool = False  #: the response is only visible to the member (their personal default)

    def alive_for(self, seconds: float) -> bool:
        """Whether the token still lives ``seconds`` from now."""
        return (self.expires_at - utcnow()).total_seconds() > seconds


class JobKind(StrEnum):
    TXT2IMG = "txt2img"
    UPSCALE = "upscale"  #: twice the size: image upscale, then img2img at low strength
    VARY = "vary"  #: img2img from an image at moderate strength, new seed
    IMG2IMG = "img2img"  #: img2img from a picture the member uploaded, at the strength they chose
    INPAINT = "inpaint"  #: the member's upload redrawn where their mask is white, at the strength they chose
    OUTPAINT = "outpaint"  #: a posted image on a larger canvas (Zoom Out, Pan), the new area drawn by the model
    DESCRIBE = "describe"  #: no image: the tagger reads the member's upload into a prompt (the event's ``prompt``)


#: img2img strength of each follow-up kind.
#: Outpainting's 0.8 is what A1111's outpainting scripts advise: the filled new area (A1111's "fill", the
#: default masked content of its Poor man's outpainting) still shows through as colour, the model draws the rest.
STRENGTH = {JobKind.UPSCALE: 0.35, JobKind.VARY: 0.6, JobKind.OUTPAINT: 0.8}


def upscale_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """Twice the size, or the largest multiple of 64 under ``max_pixels`` at the same aspect."""
    factor = min(2.0, (max_pixels / (width * height)) ** 0.5)
    return max(64, int(width * factor) // 64 * 64), max(64, int(height * factor) // 64 * 64)


class Job(Versioned):
    """One generation job as it sits on the queue: the model, LoRAs and embeddings it needs travel with it."""

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    request: GenerationRequest
    seed: int = Field(ge=0, le=MAX_SEED)
    quality_tags: bool = False
    kind: JobKind = JobKind.TXT2IMG
    source: SourceImage | None = None
    upload: UploadedImage | None = None
    inpaint: InpaintSpec | None = None  #: INPAINT and OUTPAINT: the mask and how it is used
    margins: Margins | None = None  #: OUTPAINT: the canvas around the source image
    origin: Origin | None = None
    interaction: InteractionRef | None = None
    created_at: datetime = Field(default_factory=utcnow)
    loras: list[LoraRef] = Field(default_factory=list)  #: from the prompt's ``<lora:NAME:WEIGHT>``
    embeddings: list[str] = Field(default_factory=list)  #: textual inversions named in the prompts

    @classmethod
    def create(cls, request: GenerationRequest, **fields: Any) -> Job:
        """A job for ``request``; a random seed is chosen here, once, and always reported."""
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
        if "loras" not in fields:
            fields["loras"] = parse_loras(request.prompt)
        return cls(request=request, seed=seed, **fields)

    @property
    def strength(self) -> float:
        """img2img denoising strength (1.0 for txt2img): the member's for an upload, fixed for follow-ups."""
        if self.kind in (JobKind.IMG2IMG, JobKind.INPAINT) and self.upload is not None:
            return self.upload.strength
        return STRENGTH.get(self.kind, 1.0)

    @property
    def lora_set(self) -> tuple[tuple[str, float], ...]:
        """The LoRAs and weights, in a form that compares equal for the same set (batching)."""
        return tuple(sorted((lora.name, lora.weight) for lora in self.loras if lora.weight != 0))

    def image_seed(self, index: int) -> int:
        """A1111's convention: image i of a job gets seed + i, wrapped into 0..MAX_SEED."""
        return image_seed(self.seed, index)


class ProgressEvent(Versioned):
    """Step ``step`` of ``total`` of one batch: the jobs in it, and a preview per job (lossy: sent on pub/sub)."""

    job_ids: list[str] = Field(min_length=1)
    step: int
    total: int
    previews_jpeg: dict[str, str] = Field(default_factory=dict)  #: job id -> base64 JPEG

    @classmethod
    def create(cls, job_ids: list[str], step: int, total: int,
               previews: dict[str, bytes] | None = None) -> ProgressEvent:
        encoded = {job_id: base64.b64encode(data).decode() for job_id, data in (previews or {}).items()}
        return cls(job_ids=job_ids, step=step, total=total, previews_jpeg=encoded)

    def preview(self, job_id: str) -> bytes | None:
        """This job's preview in this event, if it carries one."""
        data = self.previews_jpeg.get(job_id)
        return base64.b64decode(data) if data else None


class ImageResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int
    seed: int
    key: str | None
    width: int
    height: int
    flagged: bool = False  #: the image classifier flagged it as NSFW (or could not tell)
    withheld: bool = False  #: not posted: flagged in an SFW channel
    spoiler: bool = False  #: posted behind a spoiler: flagged in an NSFW channel that asks for it
    #: the booru tags the image tagger read, best first, with their scores (for search and a gallery)
    tags: dict[str, float] = Field(default_factory=dict)


class JobEvent(Versioned):
    """A finished job on the durable events stream: ``done`` or ``failed``."""

    kind: Literal["done", "failed"]
    job: Job
    images: list[ImageResult] = Field(default_factory=list)
    prompt: str = ""
    negative_prompt: str = ""
    error_code: str | None = None
    error_message: str | None = None  #: the operator's detail (English; logs, the CLI), never shown to a member
    reason: Reason | None = None  #: what the member is told, where the code alone does not say it (a policy refusal)
    queued_s: float = 0.0
    generation_s: float = 0.0
    worker: str = ""
    mode: Literal["sfw", "nsfw"] | None = None  #: the effective policy mode the worker applied (None: no channel)
    #: times a worker started the job (0: not counted, e.g. refused before it ran)
    attempts: int = Field(0, ge=0)

    @property
    def withheld(self) -> int:
        return sum(image.withheld for image in self.images)
