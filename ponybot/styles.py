"""Server styles: named prompt templates with a negative prompt, as in A1111's ``styles.csv``.

A style's prompt may hold ``{prompt}``, replaced by the member's prompt; without it the
style is appended after the prompt, comma-separated (A1111's ``merge_prompts``). The
styled prompt is what the channel's policy checks, like any prompt.
"""

from __future__ import annotations

import csv
import io
import re

import redis
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ponybot import keys
from ponybot.schemas import MAX_PROMPT_CHARS

MAX_STYLES = 100
NAME_PATTERN = re.compile(r"^[\w][\w .'+-]{0,49}$")


class Style(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = value.strip()
        if not NAME_PATTERN.match(value):
            raise ValueError("a style name is 1-50 letters, digits, spaces or . ' + - _")
        return value


def merge_prompts(style_prompt: str, prompt: str) -> str:
    """A1111's rule: ``{prompt}`` in the style is replaced; otherwise the style follows the prompt."""
    if "{prompt}" in style_prompt:
        return style_prompt.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_prompt.strip()) if part)


def apply_style(style: Style, prompt: str, negative_prompt: str) -> tuple[str, str]:
    return merge_prompts(style.prompt, prompt), merge_prompts(style.negative_prompt, negative_prompt)


def parse_styles_csv(text: str) -> list[Style]:
    """An A1111 ``styles.csv`` (columns name, prompt, negative_prompt); ValueError naming the bad row."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    if reader.fieldnames is None or "name" not in reader.fieldnames:
        raise ValueError("not an A1111 styles file: the first row must name the columns name,prompt,negative_prompt")
    styles = []
    for line, row in enumerate(reader, start=2):
        name = (row.get("name") or "").strip()
        if not name or name == "None":  # A1111 writes a "None" placeholder style
            continue
        try:
            styles.append(Style(name=name, prompt=row.get("prompt") or "", negative_prompt=row.get("negative_prompt")
                                or ""))
        except ValueError as error:
            raise ValueError(f"row {line} ({name!r}): {error}") from None
    return styles


class StyleStore:
    """A server's styles: one Redis hash, name (case-folded) -> style JSON."""

    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn

    def get(self, guild_id: int, name: str) -> Style | None:
        raw = self.conn.hget(keys.guild_styles(guild_id), name.strip().casefold())
        return Style.model_validate_json(raw) if raw else None

    def all(self, guild_id: int) -> list[Style]:
        raw: dict[bytes, bytes] = self.conn.hgetall(keys.guild_styles(guild_id))  # type: ignore[assignment, unused-ignore]
        return sorted((Style.model_validate_json(value) for value in raw.values()), key=lambda s: s.name.casefold())

    def put(self, guild_id: int, styles: list[Style]) -> None:
        """Add or replace styles; ValueError when the server would have more than MAX_STYLES."""
        key = keys.guild_styles(guild_id)
        names = {style.name.casefold() for style in styles}
        existing = {name.decode() for name in self.conn.hkeys(key)}  # type: ignore[union-attr, unused-ignore]
        if len(existing | names) > MAX_STYLES:
            raise ValueError(f"a server keeps at most {MAX_STYLES} styles")
        self.conn.hset(key, mapping={style.name.casefold(): style.model_dump_json() for style in styles})

    def remove(self, guild_id: int, name: str) -> bool:
        return bool(self.conn.hdel(keys.guild_styles(guild_id), name.strip().casefold()))
