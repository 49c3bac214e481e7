"""A1111's extra networks in prompts: ``<lora:NAME:WEIGHT>`` tags and textual-inversion embedding names.

Pure text, shared by the bot (checks before queueing) and the worker (what it loads). LoRA tags
are read from the prompt, as A1111 does, and taken out of the text the encoder sees; embeddings
are used where their name appears as a word in the prompt or negative prompt, otherwise the
name is plain text.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

from ponybot.errors import N_, InvalidRequestError

MAX_WEIGHT = 2.0
LORA_TAG = re.compile(r"<lora:([^:<>]*)(?::([^:<>]*))?(?::[^<>]*)?>", re.IGNORECASE)
#: What a LoRA or embedding name may look like: a file name without folders.
NETWORK_NAME = re.compile(r"[\w][\w .+()\[\]-]{0,99}")


class LoraRef(BaseModel):
    """One ``<lora:NAME:WEIGHT>`` of a prompt."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100)
    weight: float = Field(1.0, ge=-2, le=2)


def parse_loras(prompt: str) -> list[LoraRef]:
    """The LoRAs a prompt names, in order (a name given twice: the first tag counts);
    InvalidRequestError naming the tag when its name or weight is not allowed."""
    found: dict[str, LoraRef] = {}
    for match in LORA_TAG.finditer(prompt):
        tag, name, weight_text = match.group(0), match.group(1).strip(), match.group(2)
        if not NETWORK_NAME.fullmatch(name) or ".." in name:
            raise InvalidRequestError("prompt", N_("{tag}: a LoRA name is a file name without folders"), tag=tag)
        try:
            weight = 1.0 if weight_text is None or not weight_text.strip() else float(weight_text)
        except ValueError:
            raise InvalidRequestError("prompt", N_("{tag}: the weight must be a number, got {value}"), tag=tag,
                                      value=repr(weight_text)) from None
        if not -MAX_WEIGHT <= weight <= MAX_WEIGHT or weight != weight:
            raise InvalidRequestError("prompt", N_("{tag}: LoRA {name} weight must be from -2 to 2, got {value}"),
                                      tag=tag, name=name, value=f"{weight:g}")
        found.setdefault(name, LoraRef(name=name, weight=weight))
    return list(found.values())


def strip_loras(prompt: str) -> str:
    """The prompt without its LoRA tags: what the text encoder sees."""
    text = LORA_TAG.sub("", prompt)
    return re.sub(r"\s*,(\s*,)+", ",", text).strip(" ,")


def check_lora_count(loras: list[LoraRef], limit: int) -> None:
    if len(loras) > limit:
        names = ", ".join(lora.name for lora in loras)
        raise InvalidRequestError("prompt", N_("at most {limit} LoRAs per prompt on this bot, got {count} ({names})"),
                                  limit=limit, count=len(loras), names=names)


def _word(name: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])", re.IGNORECASE)


def find_embeddings(texts: list[str], names: list[str]) -> list[str]:
    """The embeddings (of ``names``) that appear as words in any of ``texts`` (LoRA tags excepted)."""
    plain = [strip_loras(text) for text in texts]
    return [name for name in names if any(_word(name).search(text) for text in plain)]


def split_embeddings(text: str, names: list[str]) -> list[tuple[str, str | None]]:
    """``text`` cut into (plain text, None) and (name, name) pieces where an embedding is named."""
    if not names:
        return [(text, None)]
    ordered = sorted(names, key=len, reverse=True)  # the longest name wins where names overlap
    pattern = re.compile("|".join(rf"(?<![\w-]){re.escape(name)}(?![\w-])" for name in ordered), re.IGNORECASE)
    lookup = {name.lower(): name for name in names}
    pieces: list[tuple[str, str | None]] = []
    position = 0
    for match in pattern.finditer(text):
        if match.start() > position:
            pieces.append((text[position : match.start()], None))
        pieces.append((match.group(0), lookup[match.group(0).lower()]))
        position = match.end()
    if position < len(text):
        pieces.append((text[position:], None))
    return pieces
