"""Folders named in the settings: created and writable before anything slow starts, or one ConfigError
naming the setting."""

from __future__ import annotations

import os
from pathlib import Path

from ponybot.errors import ConfigError


def writable_folder(folder: Path, setting: str) -> Path:
    """``folder``, created if missing; ConfigError naming ``setting`` when it is a file, cannot be created, or
    cannot be written."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{setting}: {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{setting}: cannot create {folder} ({error.strerror or error})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{setting}: {folder} is not writable")
    return folder
