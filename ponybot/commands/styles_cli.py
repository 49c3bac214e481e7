"""``ponybot styles import styles.csv --guild ID``: a server's styles from an A1111 ``styles.csv``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ponybot.errors import ConfigError
from ponybot.queue import connect, resolve_redis_url
from ponybot.settings import Settings
from ponybot.styles import StyleStore, parse_styles_csv


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    styles = commands.add_parser("styles", help="a server's saved styles (A1111 styles.csv)")
    actions = styles.add_subparsers(dest="styles_command", required=True, metavar="ACTION")
    imported = actions.add_parser("import", help="add or replace a server's styles from an A1111 styles.csv")
    imported.add_argument("file", type=Path, help="A1111 styles.csv (columns name, prompt, negative_prompt)")
    imported.add_argument("--guild", type=int, required=True, help="the Discord server (guild) id")


def cmd_styles(args: argparse.Namespace, settings: Settings) -> int:
    try:
        text = args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read {args.file}: {error}") from None
    try:
        styles = parse_styles_csv(text)
        StyleStore(connect(resolve_redis_url(settings))).put(args.guild, styles)
    except ValueError as error:
        raise ConfigError(f"{args.file}: {error}") from None
    sys.stdout.write(json.dumps({"guild": args.guild, "imported": [style.name for style in styles]},
                                ensure_ascii=False) + "\n")
    return 0
