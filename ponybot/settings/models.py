"""Settings of the models: what every model shares (``[model]``) and each one's own table (``[models.NAME]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ponybot.keys import DEFAULT_MODEL_NAME
from ponybot.prompts import QUALITY_NEGATIVE, QUALITY_TAG
from ponybot.settings.base import Section

DEFAULT_MODEL = "AstraliteHeart/pony-diffusion-v4"


class ModelSettings(Section):
    """What every model shares: the default's name, caches, LoRA and embedding folders.

    ``source``, ``config_dir`` and ``name`` are the single-model settings of earlier versions:
    when given (and no ``[models.NAME]`` table is), they describe the default model.
    """

    default: str | None = None
    cache_dir: Path = Path("data/models")
    lora_dir: Path = Path("models/lora")
    embeddings_dir: Path = Path("models/embeddings")
    max_loras: int = Field(4, ge=0, le=16)
    lora_cache: int = Field(8, ge=1, le=64)
    source: str | None = None
    config_dir: Path | None = None
    name: str | None = None


class ModelEntry(Section):
    """One model of the ``[models.NAME]`` table: where it comes from and its own prompt conventions."""

    source: str
    config_dir: Path | None = None
    name: str | None = None
    #: an inpainting checkpoint of the same model (a 9-channel UNet: a diffusers folder, a hub id, or
    #: ``tiny-inpaint``) whose UNet draws inpaint and outpaint jobs; None: the model's own UNet does
    inpaint_source: str | None = None
    description: str = ""
    clip_skip: Literal[1, 2] | None = None
    negative_prompt: str | None = None
    quality_tag: str = ""
    quality_negative: str = ""
    safe_tag: bool = True
    license_name: str = "CreativeML OpenRAIL-M"
    license_text: str | None = None


def default_models() -> dict[str, ModelEntry]:
    return {DEFAULT_MODEL_NAME: ModelEntry(
        source=DEFAULT_MODEL, description="pony-diffusion v4 (SD 1.5): ponies, booru tags",
        quality_tag=QUALITY_TAG, quality_negative=QUALITY_NEGATIVE,
    )}


def builtin_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """A ``[models.pony-v4]`` table keeps the model card's conventions (quality tags, description, license)
    for every field it does not set, whatever its source: the name says which model it is."""
    models = data.get("models")
    if not isinstance(models, dict) or not isinstance(given := models.get(DEFAULT_MODEL_NAME), dict):
        return data
    builtin = default_models()[DEFAULT_MODEL_NAME].model_dump(exclude_none=True)
    return {**data, "models": {**models, DEFAULT_MODEL_NAME: builtin | given}}
