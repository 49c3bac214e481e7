"""Result images as discord.py files, one list per message."""

from __future__ import annotations

import io

import discord


def file_batches(files: list[tuple[str, bytes]], groups: list[list[int]]) -> list[list[discord.File]]:
    """Fresh :class:`discord.File` objects (a file is read once per send) for each group of file indexes."""
    return [[discord.File(io.BytesIO(files[i][1]), filename=files[i][0]) for i in group] for group in groups]
