"""The member's language: gettext catalogs (Babel ``.po`` files, compiled in memory when first used).

Every message the bot writes goes through :func:`t` with the member's Discord locale;
English (the message ids themselves) is the fallback. Command names, descriptions and
choices are localised in the registration payload by :class:`CatalogTranslator`.
A clean checkout needs no compile step: the ``.po`` files under ``bot/locale`` are read
and compiled by Babel at first use. ``python -m bot.i18n`` refreshes the template and
merges it into every catalog after messages change.
"""

from __future__ import annotations

import gettext
import io
import runpy
from functools import cache
from pathlib import Path
from typing import Any

import discord
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from discord import app_commands

from ponybot.errors import PonybotError, Reason

LOCALE_DIR = Path(__file__).with_name("locale")
DOMAIN = "ponybot"
#: Shipped languages besides English (the message ids).
LANGUAGES = ("de", "fr")
#: msgctxt of names in the command registration (names and descriptions may share a word).
NAME_CONTEXTS = {
    app_commands.TranslationContextLocation.command_name: "command",
    app_commands.TranslationContextLocation.group_name: "command",
    app_commands.TranslationContextLocation.parameter_name: "option",
    app_commands.TranslationContextLocation.choice_name: "choice",
}


def N_(message: str) -> str:
    """Marks a message for extraction where it is translated later (a table of reasons)."""
    return message


def NP_(context: str, message: str) -> str:
    """Marks a message with a context (a button label) for extraction; translated later with :func:`tp`."""
    return message


def catalog_path(language: str) -> Path:
    return LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"


@cache
def translations(language: str) -> gettext.NullTranslations:
    """The language's catalog, compiled from its ``.po`` file (English: none, the ids are English)."""
    path = catalog_path(language)
    if language not in LANGUAGES or not path.is_file():
        return gettext.NullTranslations()
    with path.open("rb") as source:
        catalog = read_po(source, locale=language)
    compiled = io.BytesIO()
    write_mo(compiled, catalog, use_fuzzy=False)
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


def language_of(locale: str | discord.Locale | None) -> str:
    """``de``, ``fr-FR`` -> a shipped language; anything else -> ``en``."""
    language = str(locale or "en").split("-")[0].lower()
    return language if language in LANGUAGES else "en"


def t(locale: str | discord.Locale | None, message: str, /, **params: Any) -> str:
    """``message`` in the member's language, with ``{name}`` placeholders filled in."""
    text = translations(language_of(locale)).gettext(message)
    return text.format(**params) if params else text


def t_reason(locale: str | discord.Locale | None, reason: Reason) -> str:
    """A reason the contract gave (a catalog message id and its parameters) in the member's language."""
    return t(locale, reason.message, **reason.params)


#: discord.py's permission flags the bot checks -> Discord's English names; the catalogs hold Discord's own
#: names in each language (msgctxt "permission"), e.g. Manage Server: "Server verwalten", "Gérer le serveur".
PERMISSIONS = {
    "administrator": NP_("permission", "Administrator"),
    "manage_guild": NP_("permission", "Manage Server"),
    "manage_channels": NP_("permission", "Manage Channels"),
    "manage_messages": NP_("permission", "Manage Messages"),
    "send_messages": NP_("permission", "Send Messages"),
    "embed_links": NP_("permission", "Embed Links"),
    "attach_files": NP_("permission", "Attach Files"),
    "view_channel": NP_("permission", "View Channel"),
    "send_messages_in_threads": NP_("permission", "Send Messages in Threads"),
}


def permission_name(locale: str | discord.Locale | None, flag: str) -> str:
    """A permission as Discord names it in the member's language (``manage_guild``: "Server verwalten")."""
    english = PERMISSIONS.get(flag) or flag.replace("guild", "server").replace("_", " ").title()
    return tp(locale, "permission", english)


def tp(locale: str | discord.Locale | None, context: str, message: str) -> str:
    """A word with a context (``pgettext``): a button label, a command name."""
    return translations(language_of(locale)).pgettext(context, message)


class MemberError(PonybotError):
    """An expected refusal, written in the language of whoever reads it (``field``: the option it is about)."""

    def __init__(self, message: str, /, *, field: str | None = None, **params: Any) -> None:
        super().__init__(message.format(**params))
        self.message, self.params, self.field = message, params, field

    def render(self, locale: str | discord.Locale | None) -> str:
        text = t(locale, self.message, **self.params)
        return f"**{self.field}**: {text}" if self.field else text


class CatalogTranslator(app_commands.Translator):
    """discord.py asks this for every name, description and choice when it syncs the commands."""

    async def translate(self, string: app_commands.locale_str, locale: discord.Locale,
                        context: app_commands.TranslationContextTypes) -> str | None:
        language = language_of(locale)
        if language == "en" or str(locale).split("-")[0] != language:
            return None
        catalog = translations(language)
        name_context = NAME_CONTEXTS.get(context.location)
        text = catalog.pgettext(name_context, string.message) if name_context else catalog.gettext(string.message)
        return None if text == string.message else text


if __name__ == "__main__":  # pragma: no cover - a maintainer's tool
    # the catalog tool sits above this module (it assembles the whole bot to read its commands): run it, not import it
    runpy.run_module("bot.i18n_catalog", run_name="__main__", alter_sys=True)
