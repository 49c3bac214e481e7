"""Forbidden-term matching that sees through evasions without refusing harmless words.

A prompt is normalised before matching: A1111 emphasis syntax is removed, Unicode
is folded (NFKC, case folding, accents, Cyrillic and Greek look-alikes), zero-width
characters are dropped, and digits or symbols standing in for letters are read as
letters. Matching is by whole words (``class`` never matches ``ass``), and also
across the separators people put inside a word: ``n u d e``, ``n.u.d.e``, ``nu de``
and ``nuuude`` all read as ``nude``. Plurals (``-s``, ``-es``) match their term, and a
term ending in ``*`` matches every word it begins (``porn*``: ``pornography``).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from ponybot.prompt_syntax import strip_emphasis

ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad\u034f"))
#: Letters that look Latin but are not (NFKC leaves them alone).
CONFUSABLES = str.maketrans({
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t",
    "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ь": "b", "п": "n",
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u",
    "χ": "x", "ω": "w", "ɑ": "a", "ɡ": "g", "ɩ": "i", "ı": "i", "ʀ": "r", "ꜱ": "s", "ᴅ": "d", "ᴇ": "e", "ɴ": "n",
    "ᴜ": "u", "ᴏ": "o", "ᴘ": "p", "ʏ": "y",
})
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
    def reason(self) -> str | None:
        if self.allowed:
            return None
        return f"the prompt contains a term this channel does not allow: “{self.term}”"


def fold(text: str) -> str:
    """NFKC, case folding, no accents, no zero-width characters, look-alikes as Latin letters."""
    text = unicodedata.normalize("NFKC", text).translate(ZERO_WIDTH).casefold()
    text = "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))
    return text.translate(CONFUSABLES)


def squeeze(word: str) -> str:
    """``nuuuude`` -> ``nude``: three or more of a letter count as one."""
    return re.sub(r"(.)\1{2,}", r"\1", word)


def words(text: str) -> list[str]:
    """The words of a prompt as the matcher reads them."""
    folded = fold(strip_emphasis(text))
    return [match.group(0).translate(LEET) for match in WORD.finditer(folded)]


def _variants(word: str) -> set[str]:
    base = {word, squeeze(word)}
    return base | {w[:-2] for w in base if w.endswith("es")} | {w[:-1] for w in base if w.endswith("s")}


def _spans(prompt: list[str], phrase_lengths: set[int]) -> list[str]:
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
    """The first forbidden term the prompt carries, read through the evasions above."""
    phrases = {term: " ".join(words(term)) for term in terms}
    lengths = {phrase.count(" ") + 1 for phrase in phrases.values() if phrase}
    spans = [(span, _variants(span)) for span in _spans(words(text), lengths)]
    for term, phrase in phrases.items():
        if not phrase:
            continue
        prefix = term.rstrip().endswith("*")
        for span, variants in spans:
            if phrase in variants or (prefix and span.startswith(phrase)):
                return FilterResult(False, term, span)
    return FilterResult(True)
