"""The message catalog's keys: every message marked in the bot's code and every string of its commands.

``collect()`` is what a shipped catalog must translate (a test checks each one);
``refresh()`` writes ``bot/locale/ponybot.pot`` and merges it into each language's ``.po``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po, write_po
from discord import app_commands

from bot.i18n import DOMAIN, LANGUAGES, LOCALE_DIR, catalog_path

BOT_DIR = Path(__file__).parent
CONTRACT_DIR = BOT_DIR.parent / "ponybot"
#: gettext keywords: t(locale, message), tp(locale, context, message), N_(message), MemberError(message)
KEYWORDS = {"t": (2,), "tp": ((2, "c"), 3), "N_": None, "NP_": ((1, "c"), 2), "MemberError": (1,)}
Key = tuple[str | None, str]  # (msgctxt, msgid)


def code_messages() -> Iterator[Key]:
    """Marked messages in the bot, and the ones ``ponybot`` marks with ``N_`` for the bot to translate."""
    for folder in (BOT_DIR, CONTRACT_DIR):
        for _file, _line, message, _comments, context in extract_from_dir(folder, keywords=KEYWORDS,
                                                                          comment_tags=()):
            yield context, message if isinstance(message, str) else message[0]


def command_strings(commands: list[app_commands.Command | app_commands.Group]) -> Iterator[Key]:  # type: ignore[type-arg, unused-ignore]
    for command in commands:
        yield "command", command.name
        yield None, command.description
        if isinstance(command, app_commands.Group):
            yield from command_strings(command.commands)
            continue
        for parameter in command.parameters:
            yield "option", parameter.name
            if parameter.description and parameter.description != "…":
                yield None, parameter.description
            for choice in parameter.choices:
                yield "choice", choice.name


async def _tree_strings() -> list[Key]:
    from bot.app import FEATURES, PonyBot
    from ponybot.settings import Settings

    bot = PonyBot(Settings(), "redis://127.0.0.1:1/0")
    try:
        for feature in FEATURES:
            await bot.load_extension(feature)
        return list(command_strings(bot.tree.get_commands()))  # type: ignore[arg-type, unused-ignore]
    finally:
        await bot.redis.aclose()
        bot.sync_redis.close()


def collect() -> list[Key]:
    """Every (context, message) the shipped catalogs must translate, in a stable order."""
    keys = dict.fromkeys([*code_messages(), *asyncio.run(_tree_strings())])
    return list(keys)


def refresh() -> None:
    template = Catalog(domain=DOMAIN, project="ponybot", fuzzy=False)
    for context, message in collect():
        template.add(message, context=context)
    with (LOCALE_DIR / f"{DOMAIN}.pot").open("wb") as out:
        write_po(out, template, omit_header=False, sort_output=False, width=120)
    for language in LANGUAGES:
        path = catalog_path(language)
        if path.is_file():
            with path.open("rb") as source:
                catalog = read_po(source, locale=language)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            catalog = Catalog(locale=language, domain=DOMAIN, project="ponybot")
        catalog.update(template, no_fuzzy_matching=True)
        with path.open("wb") as out:
            write_po(out, catalog, width=120, ignore_obsolete=True)


if __name__ == "__main__":  # pragma: no cover - a maintainer's tool (``python -m bot.i18n`` runs it)
    refresh()
