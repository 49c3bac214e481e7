"""The prompt filter's term lists: what each list holds, where it comes from, which strictness adds it.

The built-in lists are data files in ``ponybot/terms/`` (one per language the bot speaks, the
fandom's own words, emoji); the operator's settings and each channel's moderators add lists of
their own. An entry is written as:

- ``nude``: the word (and its plural: ``-s``, ``-es``); ``rule 34``: those words side by side;
- ``nackt/adj``: the word with each ending of the file's ``[inflections]`` table ``adj``
  (``nackt``, ``nackte``, ``nackten`` ...);
- ``porn*``: every word it begins (``pornography``); ``*sex``: every word it ends (``gruppensex``);
  a word of the list's ``allow`` table is never refused by either (``sexten``, ``essex``);
- under ``phrases``: words that refuse together when they stand within a few words of each other
  in one comma-separated part of the prompt, in any order (``no|without clothes|clothing``:
  ``|`` separates the words that may stand in each place); emoji are words here (``🍆 💦``).

Each group of entries names its class (``nudity``, ``sex`` ...) and the strictness that adds it
(``standard``: every SFW channel; ``strict``: SFW channels set to ``strict`` as well).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from typing import Any

from ponybot.errors import N_, ConfigError

#: The built-in lists SFW channels apply (all of them, whatever the member's language), in search order.
SFW_LISTS = ("en", "de", "fr", "fandom", "emoji")
#: The built-in lists NSFW channels apply: young characters, in every language the bot speaks.
NSFW_LISTS = ("young",)
BUILTIN = SFW_LISTS + NSFW_LISTS
LEVELS = ("standard", "strict")
#: The class of an entry an operator or a moderator added.
CUSTOM = "custom"
#: Each class an entry may have, as ``/policy test`` names it (a catalog message).
CLASSES = {
    "nudity": N_("nudity"), "genitals": N_("genitals"), "sex": N_("sex"), "fetish": N_("fetish"),
    "suggestive": N_("suggestive"), "explicit-tag": N_("a booru rating or explicit tag"),
    "slang": N_("the fandom's slang for explicit art"), "emoji": N_("emoji"), "young": N_("young characters"),
    CUSTOM: N_("a term the operator or a moderator added"),
}


@dataclass(frozen=True)
class Entry:
    """One entry of a list, as written there (what ``/policy test`` shows)."""

    text: str
    cls: str
    level: str = "standard"


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: the matcher caches its tables per list
class TermList:
    name: str
    words: tuple[tuple[str, Entry], ...] = ()  #: each form of a word entry (or of a run of words)
    starts: tuple[tuple[str, Entry], ...] = ()  #: word beginnings (``porn*``)
    ends: tuple[tuple[str, Entry], ...] = ()  #: word endings (``*sex``)
    phrases: tuple[tuple[tuple[tuple[str, ...], ...], Entry], ...] = ()  #: places, each with its words
    allow: tuple[str, ...] = ()  #: words (or runs of words) never refused by a beginning, an ending or a phrase


def _expand(text: str, inflections: dict[str, list[str]] | None, where: str) -> list[str]:
    """``nackt/adj`` -> each ending of the ``adj`` table on ``nackt``; a plain word (or any word, without
    tables: a moderator's term is taken as typed) -> itself."""
    if inflections is None or "/" not in text:
        return [text]
    stem, _, table = text.partition("/")
    if table not in inflections:
        raise ConfigError(f"{where}: “{text}” names the inflection table “{table}”, which the list lacks "
                          f"(it has: {', '.join(sorted(inflections)) or 'none'})")
    return [stem + ending for ending in inflections[table]]


def _add_term(text: str, entry: Entry, inflections: dict[str, list[str]] | None, where: str,
              into: dict[str, list[tuple[str, Entry]]]) -> None:
    text = text.strip()
    kind = "starts" if text.endswith("*") else "ends" if text.startswith("*") else "words"
    if text.strip("*"):
        into[kind] += [(form.strip(), entry) for form in _expand(text.strip("*"), inflections, where)]


def _phrase(text: str, inflections: dict[str, list[str]], where: str) -> tuple[tuple[str, ...], ...]:
    places = tuple(tuple(form for word in place.split("|") if word for form in _expand(word, inflections, where))
                   for place in text.split())
    if len(places) < 2 or not all(places):
        raise ConfigError(f"{where}: the phrase “{text}” needs two or more places, each with a word")
    return places


def parse_list(name: str, data: dict[str, Any]) -> TermList:
    """A list from a data file's table (see the module's documentation); a malformed one is a ConfigError."""
    unknown = set(data) - {"inflections", "allow", "group"}
    if unknown:
        raise ConfigError(f"term list {name}: unknown keys {', '.join(sorted(unknown))} (a key after a [table] "
                          "header belongs to that table)")
    inflections: dict[str, list[str]] = data.get("inflections", {})
    if "allow" in inflections:
        raise ConfigError(f"term list {name}: “allow” stands under [inflections]: move it above the first [table]")
    if not all(isinstance(ends, list) and all(isinstance(e, str) for e in ends) for ends in inflections.values()):
        raise ConfigError(f"term list {name}: each inflection table is a list of endings")
    found: dict[str, list[tuple[str, Entry]]] = {"words": [], "starts": [], "ends": []}
    phrases: list[tuple[tuple[tuple[str, ...], ...], Entry]] = []
    for index, group in enumerate(data.get("group", [])):
        where = f"term list {name}, group {index + 1}"
        cls, level = group.get("class"), group.get("level", "standard")
        if cls not in CLASSES or cls == CUSTOM or level not in LEVELS:
            raise ConfigError(f"{where}: needs a class of {', '.join(c for c in CLASSES if c != CUSTOM)} and a level "
                              f"of {' or '.join(LEVELS)} (has {cls!r}, {level!r})")
        for text in group.get("terms", []):
            _add_term(text, Entry(text, cls, level), inflections, where, found)
        phrases += [(_phrase(text, inflections, where), Entry(text, cls, level)) for text in group.get("phrases", [])]
    return TermList(name, tuple(found["words"]), tuple(found["starts"]), tuple(found["ends"]), tuple(phrases),
                    tuple(data.get("allow", [])))


def at_level(full: TermList, strict: bool) -> TermList:
    """The list without the entries that only ``strict`` adds (``strict``: the list as it is)."""
    if strict:
        return full

    def keep(pairs: tuple[tuple[Any, Entry], ...]) -> tuple[tuple[Any, Entry], ...]:
        return tuple(pair for pair in pairs if pair[1].level == "standard")

    return TermList(full.name, keep(full.words), keep(full.starts), keep(full.ends), keep(full.phrases), full.allow)


@cache
def builtin(name: str) -> TermList:
    """A built-in list, read once from ``ponybot/terms/<name>.toml``."""
    text = resources.files("ponybot.terms").joinpath(f"{name}.toml").read_text(encoding="utf-8")
    return parse_list(name, tomllib.loads(text))


@cache
def builtin_lists(strict: bool) -> tuple[TermList, ...]:
    """Every built-in list at a strictness (the same objects on every call, so the matcher's cache holds)."""
    return tuple(at_level(builtin(name), strict) for name in BUILTIN)


@lru_cache(maxsize=1024)
def custom_list(name: str, terms: tuple[str, ...]) -> TermList:
    """An operator's or a moderator's terms as a list (``*`` at either end as in the data files)."""
    found: dict[str, list[tuple[str, Entry]]] = {"words": [], "starts": [], "ends": []}
    for term in terms:
        _add_term(term, Entry(term, CUSTOM), None, f"term list {name}", found)
    return TermList(name, tuple(found["words"]), tuple(found["starts"]), tuple(found["ends"]))
