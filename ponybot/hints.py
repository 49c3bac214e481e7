"""How to spell the ``ponybot`` command in a hint, so the hint works when pasted."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def ponybot_command() -> str:
    """``ponybot`` when PATH finds this one, else its path (``.venv/bin/ponybot`` under ``make run``)."""
    script = Path(sys.executable).with_name("ponybot")
    if not script.is_file():
        return f"{sys.executable} -m ponybot"
    on_path = shutil.which("ponybot")
    if on_path and Path(on_path).resolve() == script.resolve():
        return "ponybot"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)
