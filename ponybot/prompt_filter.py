"""Forbidden-term matching that sees through evasions without refusing harmless words.

A prompt is read three ways before matching, and refused when any reading carries a
term: folded (NFKC, case folding, no accents), as its Unicode confusables skeleton
(UTS #39, from the ``confusable_homoglyphs`` package's copy of Unicode's
``confusables.txt``: ``ԁ``, ``ꓠ``, ``Ꭺ`` read as the Latin letters they look like), and
transliterated to ASCII (``anyascii``: ``нуде`` reads ``nude``). Terms are read the
same three ways. In every reading A1111 emphasis syntax is removed, zero-width
characters are dropped, and digits or symbols standing in for letters are read as
letters. Matching is by whole words (``class`` never matches ``ass``), and also
across the separators people put inside a word: ``n u d e``, ``n.u.d.e``, ``nu de``
and ``nuuude`` all read as ``nude``. Plurals (``-s``, ``-es``) match their term, and a
term ending in ``*`` matches every word it begins (``porn*``: ``pornography``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache

from ponybot.errors import N_, Reason, reason
from ponybot.prompt_syntax import strip_emphasis

ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad\u034f"))
#: What neither Unicode's confusables nor a transliteration reads as the Latin letter it looks like in
#: lowercase (``confusables.txt`` pairs ``п`` with ``π``, ``ω`` with ``ɷ``; anyascii reads ``п`` as ``p``).
#: A test keeps this list to the letters the readings below miss.
SHAPES = str.maketrans({"п": "n", "ь": "b", "β": "b", "χ": "x", "ω": "w"})
LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "@": "a", "$": "s",
                      "!": "i", "|": "l", "+": "t"})
WORD = re.compile(r"[^\W_]+|[@$!|+]+")
SCATTERED = 2  #: pieces this short, side by side, are read as one word
MAX_SCATTERED = 12


@dataclass(frozen=True)
class FilterResult:
    allowed: bool
    term: str | None = None
    found: str | None = None

    @property
    def reason(self) -> Reason | None:
        if self.allowed:
            return None
        return reason(N_("the prompt contains a term this channel does not allow: “{term}”"), term=self.term or "")


def _no_marks(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))


def fold(text: str) -> str:
    """NFKC, case folding, no accents, no zero-width characters, :data:`SHAPES` as Latin letters."""
    return _no_marks(unicodedata.normalize("NFKC", text).translate(ZERO_WIDTH).casefold()).translate(SHAPES)


@cache
def _prototypes() -> dict[str, str]:
    """Each confusable character -> the representative of its class (UTS #39's prototype).

    ``confusable_homoglyphs`` keeps Unicode's ``confusables.txt`` both ways: a source lists
    its one prototype, a prototype lists its sources. A pair that lists only each other
    gets the smaller code point as its representative, so both map to the same one.
    """
    from confusable_homoglyphs.utils import load

    data: dict[str, list[dict[str, str]]] = load("confusables.json")
    table: dict[str, str] = {}
    for char, entries in data.items():
        if len(char) != 1 or len(entries) != 1:
            continue  # a prototype with several look-alikes maps to itself
        target = entries[0]["c"].replace("\u200e", "").replace("\u200f", "")
        back = [entry["c"] for entry in data.get(target, [])]
        if back == [char]:  # two characters that list only each other
            target = min(char, target)
        if target != char:
            table[char] = target
    return table


def skeleton(text: str) -> str:
    """UTS #39's skeleton (NFD, each confusable as its prototype, NFD), case-folded, without accents."""
    table = _prototypes()
    mapped = "".join(table.get(c, c) for c in unicodedata.normalize("NFD", fold(text)))
    return _no_marks(mapped.casefold())


def transliterate(text: str) -> str:
    """Letters of any script in ASCII (``anyascii``); symbols and emoji stay as they are."""
    from anyascii import anyascii

    text = unicodedata.normalize("NFKC", text).translate(ZERO_WIDTH)
    return _no_marks("".join(anyascii(c) if unicodedata.category(c)[0] == "L" else c for c in text).casefold())


def skeleton_transliterated(text: str) -> str:
    """The skeleton in ASCII: prototypes that are small capitals (``ʜ``, ``ʙ``) read as their letters."""
    return transliterate(skeleton(text))


#: The readings of a prompt; a term found in any of them refuses it.
READINGS: tuple[Callable[[str], str], ...] = (fold, skeleton, transliterate, skeleton_transliterated)


def squeeze(word: str) -> str:
    """``nuuuude`` -> ``nude``: three or more of a letter count as one."""
    return re.sub(r"(.)\1{2,}", r"\1", word)


def words(text: str, reading: Callable[[str], str] = fold) -> list[str]:
    """The words of a prompt as the matcher reads them in one reading."""
    read = reading(strip_emphasis(text))
    return [match.group(0).translate(LEET) for match in WORD.finditer(read)]


def _variants(word: str) -> set[str]:
    base = {word, squeeze(word)}
    return base | {w[:-2] for w in base if w.endswith("es")} | {w[:-1] for w in base if w.endswith("s")}


def _spans(prompt: list[str], phrase_lengths: frozenset[int]) -> list[str]:
    """Each word; each run of as many words as a multi-word term has; each run of scattered letters."""
    spans = list(prompt)
    for length in phrase_lengths - {1}:
        spans += [" ".join(prompt[i : i + length]) for i in range(len(prompt) - length + 1)]
    for start in range(len(prompt)):  # ``n u d e``, ``nu de``: pieces of at most two characters glued
        end = start
        while end < len(prompt) and len(prompt[end]) <= SCATTERED and end - start < MAX_SCATTERED:
            end += 1
            if end - start >= 2:
                spans.append("".join(prompt[start:end]))
    return spans


def check_prompt(text: str, terms: list[str]) -> FilterResult:
    """The first forbidden term the prompt carries in any reading, seen through the evasions above."""
    for reading in READINGS:
        found = _check_reading(text, terms, reading)
        if not found.allowed:
            return found
    return FilterResult(True)


@lru_cache(maxsize=256)
def _phrases(terms: tuple[str, ...], reading: Callable[[str], str]) -> tuple[dict[str, str], frozenset[int]]:
    """The terms as the matcher reads them, and their lengths in words: the same for every prompt of a channel,
    so read once (a server's 40 terms in 4 readings cost more than the prompt itself)."""
    phrases = {term: " ".join(words(term, reading)) for term in terms}
    return phrases, frozenset(phrase.count(" ") + 1 for phrase in phrases.values() if phrase)


def _check_reading(text: str, terms: list[str], reading: Callable[[str], str]) -> FilterResult:
    phrases, lengths = _phrases(tuple(terms), reading)
    spans = [(span, _variants(span)) for span in _spans(words(text, reading), lengths)]
    for term, phrase in phrases.items():
        if not phrase:
            continue
        prefix = term.rstrip().endswith("*")
        for span, variants in spans:
            if phrase in variants or (prefix and span.startswith(phrase)):
                return FilterResult(False, term, span)
    return FilterResult(True)
