"""``ponybot init``: write a commented ``config.toml`` from ``config.example.toml``, filled with what this
machine says (a GPU or not, a model already in a cache, a free port for the gallery). It asks only for the
bot's token, and not even that when ``DISCORD_TOKEN`` is set (the config then leaves it to the environment).
An existing file is never overwritten."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

from ponybot.errors import ConfigError
from ponybot.settings import Settings, load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"
DEFAULT_SOURCE = "AstraliteHeart/pony-diffusion-v4"
TOKEN_VARIABLES = ("DISCORD_TOKEN", "PONYBOT_DISCORD__TOKEN")


def add_parser(commands: Any) -> None:
    init = commands.add_parser(
        "init", help="write a commented config.toml for this machine (never overwrites)",
        description="Write a commented config.toml from config.example.toml, filled with what this machine has "
                    "(GPU or CPU, a cached model, a free port). Asks only for the bot's token (not when "
                    "DISCORD_TOKEN is set). Never overwrites an existing file.")
    init.add_argument("path", nargs="?", type=Path, default=Path("config.toml"),
                      help="where to write it (default: config.toml)")
    init.add_argument("--tiny", action=argparse.BooleanOptionalAction, default=None,
                      help="use the tiny random-weight model, to try the set-up in seconds (default: on without "
                           "a GPU)")


def say(text: str) -> None:
    sys.stdout.write(text + "\n")


def gpu_present() -> bool:
    from ponybot.commands.doctor_checks import gpu_visible

    return gpu_visible()


def cached_model_dir(candidates: list[Path]) -> Path | None:
    """The first cache folder that already holds pony-diffusion-v4 (looked up offline)."""
    from huggingface_hub import try_to_load_from_cache

    for folder in candidates:
        if isinstance(try_to_load_from_cache(DEFAULT_SOURCE, "model_index.json", cache_dir=str(folder)), str):
            return folder
    return None


def free_port(start: int, host: str = "127.0.0.1") -> int:
    """``start`` when nothing listens there, else the next free one."""
    for port in range(start, min(start + 100, 65536)):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    raise ConfigError(f"no free port from {start} to {start + 99}")


def fill(text: str, values: dict[tuple[str, str], Any]) -> str:
    """Set ``key = value`` under ``[section]`` in the example (a commented-out key is un-commented); the
    comments stay. Every key must be found."""
    lines = text.splitlines()
    section = ""
    left = dict(values)
    for index, line in enumerate(lines):
        if header := re.fullmatch(r"\[([^\]]+)\]", line.strip()):
            section = header.group(1)
            continue
        key = re.match(r"#?\s*([a-z_]+) = ", line)
        if key and (section, key.group(1)) in left:
            lines[index] = f"{key.group(1)} = {json.dumps(left.pop((section, key.group(1))))}"
    if left:
        raise ConfigError(f"config.example.toml has no {sorted(left)}")
    return "\n".join(lines) + "\n"


def ask_token() -> str | None:
    """The token from the environment (None: the config leaves it there), else asked for on a terminal."""
    if any(os.environ.get(name) for name in TOKEN_VARIABLES):
        return None
    if not sys.stdin.isatty():
        return None
    token = getpass.getpass("The bot's token (developer portal > your application > Bot > Reset Token; "
                            "empty: set DISCORD_TOKEN later): ").strip()
    return token or None


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    path: Path = args.path
    if path.exists():
        raise ConfigError(f"{path} exists: ponybot init never overwrites it (edit it, or name another file)")
    if not EXAMPLE.is_file():
        raise ConfigError(f"{EXAMPLE} not found: run ponybot init from a checkout of ponybot")
    gpu = gpu_present()
    tiny = not gpu if args.tiny is None else args.tiny
    values: dict[tuple[str, str], Any] = {("worker", "device"): "cuda" if gpu else "cpu",
                                          ("gallery", "port"): free_port(settings.gallery.port)}
    cache = cached_model_dir([settings.model.cache_dir, Path(os.environ.get(
        "HF_HUB_CACHE", Path.home() / ".cache" / "huggingface" / "hub"))])
    if cache is not None:
        values[("model", "cache_dir")] = str(cache)
    if tiny:
        values[("models.pony-v4", "source")] = "tiny"
    token = ask_token()
    if token:
        values[("discord", "token")] = token
    text = fill(EXAMPLE.read_text(), values)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:  # never overwrite
        out.write(text)
    load_settings(path)  # what was written parses
    say(f"wrote {path}: {'a GPU' if gpu else 'no GPU'} (worker.device = {values[('worker', 'device')]!r}), "
        f"model {'tiny (random weights; set [models.pony-v4] source back for real images)' if tiny else DEFAULT_SOURCE}"
        f"{f', found in {cache}' if cache else ''}, gallery port {values[('gallery', 'port')]}")
    if token is None:
        say("the token: set DISCORD_TOKEN in the environment (or token under [discord] in the file)")
    say("next: ponybot doctor, then ponybot invite")
    return 0
