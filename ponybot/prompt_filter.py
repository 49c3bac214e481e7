"""Forbidden-term matching that sees through evasions without refusing harmless words.

A prompt is read three ways before matching, and refused when any reading carries a
term: folded (NFKC, case folding, no accents), as its Unicode confusables skeleton
(UTS #39, from the ``confusable_homoglyphs`` package's copy of Unicode's
``confusables.txt``: ``ԁ``, ``ꓠ``, ``Ꭺ`` read as the Latin letters they look like), and
transliterated to ASCII (``anyascii``: ``нуде`` reads ``nude``). Terms are read the
same three ways. In every reading A1111 emphasis syntax is removed, zero-width
characters are dropped, and digits or symbols standing in for letters are read as
letters. Matching is by whole words (``class`` never matches ``ass``), and also
across the separators people put inside a word: ``n u d e``, ``n.u.d.e``, ``na-ked``,
``nu de`` and ``nuuude`` all read as words of the list. Plurals (``-s``, ``-es``, ``-z``)
match their term, doubled letters read as one where the term has them once (``s33x``,
``p00rn``), a term ending in ``*`` matches every word it begins (``porn*``:
``pornography``) and one starting with ``*`` every word it ends (``*sex``: ``gruppensex``).

The terms come as lists (:mod:`ponybot.term_lists`: the built-in data files, the
operator's and the channel's own): phrases match their words in any order, a few words
apart, inside one comma-separated part of the prompt; emoji are words of their own; a
list's ``allow`` table keeps harmless words and runs of words from being refused. Of
the spans that carry a term, the longest is reported, with its list, entry and class.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache

from ponybot.errors import N_, Reason, reason
from ponybot.prompt_syntax import strip_emphasis
from ponybot.term_lists import BUILTIN, Entry, TermList, builtin, custom_list

ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad\u034f"))
#: What neither Unicode's confusables nor a transliteration reads as the Latin letter it looks like in
#: lowercase (``confusables.txt`` pairs ``п`` with ``π``, ``ω`` with ``ɷ``; anyascii reads ``п`` as ``p``).
#: A test keeps this list to the letters the readings below miss.
SHAPES = str.maketrans({"п": "n", "ь": "b", "β": "b", "χ": "x", "ω": "w"})
LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "@": "a", "$": "s",
                      "!": "i", "|": "l", "+": "t", "€": "e"})
#: Emoji and pictographs: each one a word of its own (``🔞``; ``🍆💦`` is two words side by side).
EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF]")
SYMBOLS = "[@$!|+€]"  #: symbols read as letters (:data:`LEET`) inside a word, or alone
TOKEN = re.compile(rf"{SYMBOLS}*[^\W_]+(?:{SYMBOLS}+[^\W_]+)*|{SYMBOLS}+|{EMOJI.pattern}")
#: Where one part of a prompt ends and the next begins (a phrase matches only inside one part).
CLAUSE = re.compile(r"[,;\n]|[.!?](?=\s|$)")
#: A word cut by joiners (``na-ked``): matched whole, never by its beginning (``Sexey-les-Bois`` is a place).
JOINERS = re.compile(r"[-.'’~_*]")
JOINED = re.compile(rf"[^\W_]+(?:{JOINERS.pattern}[^\W_]+)+")
#: A word with letters starred out (``s*x``, ``p**n``): each star one letter, the rest as written.
MASKED = re.compile(r"[^\W_]+(?:\*+[^\W_]+)+")
TRIPLED, DOUBLED = re.compile(r"(.)\1{2,}"), re.compile(r"(.)\1+")
PHRASE_GAP = 2  #: words that may stand between the words of a phrase
PHRASE_GAP_EMOJI = 1  #: the same for a phrase of emoji (a peach and, later, a drop of rain are fruit and weather)
SCATTERED = 2  #: pieces this short, side by side, are read as one word
MAX_SCATTERED = 12


@dataclass(frozen=True)
class FilterResult:
    allowed: bool
    term: str | None = None  #: the entry, as its list writes it
    found: str | None = None  #: what the prompt holds, as the matcher read it
    list_name: str | None = None
    cls: str | None = None  #: the entry's class (``nudity``, ``sex`` ..., ``custom``)

    @property
    def reason(self) -> Reason | None:
        if self.allowed:
            return None
        term = self.term or ""
        shown = self.found or term if "/" in term or "|" in term else term  # a phrase: the member's own words
        return reason(N_("the prompt contains a term this channel does not allow: “{term}”"), term=shown)


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
    return TRIPLED.sub(r"\1", word)


def collapse(word: str) -> str:
    """``s33x`` (read ``seex``) -> ``sex``: every doubled letter as one."""
    return DOUBLED.sub(r"\1", word)


def clauses(text: str, reading: Callable[[str], str] = fold) -> list[list[str]]:
    """The tokens (words, and emoji as words of their own) of each comma-separated part of a prompt."""
    return _parts(reading(strip_emphasis(text)))


def _parts(read: str) -> list[list[str]]:
    return [[match.group(0).translate(LEET) for match in TOKEN.finditer(part)] for part in CLAUSE.split(read)]


def _joined(read: str) -> list[str]:
    """Words split by hyphens, dots, apostrophes or stars, each read as one word (``na-ked``, ``por.no``)."""
    return [JOINERS.sub("", match.group(0)).translate(LEET) for match in JOINED.finditer(read)]


def is_emoji(token: str) -> bool:
    return EMOJI.fullmatch(token) is not None


def words(text: str, reading: Callable[[str], str] = fold) -> list[str]:
    """The words of a prompt as the matcher reads them in one reading."""
    return [token for part in clauses(text, reading) for token in part if not is_emoji(token)]


def _variants(word: str) -> set[str]:
    base = {word, squeeze(word)}
    return base | {w[:-2] for w in base if w.endswith("es")} | {w[:-1] for w in base if w[-1:] in ("s", "z")}


def _spans(prompt: list[str], phrase_lengths: Iterable[int]) -> list[str]:
    """Each word; each run of as many words as a multi-word term has; each run of scattered letters."""
    spans = list(prompt)
    for length in set(phrase_lengths) - {1}:
        spans += [" ".join(prompt[i : i + length]) for i in range(len(prompt) - length + 1)]
    for start in range(len(prompt)):  # ``n u d e``, ``nu de``: pieces of at most two characters glued
        end = start
        while end < len(prompt) and len(prompt[end]) <= SCATTERED and end - start < MAX_SCATTERED:
            end += 1
            if end - start >= 2:
                spans.append("".join(prompt[start:end]))
    return spans


@dataclass(frozen=True)
class Hit:
    list_name: str
    entry: Entry


@dataclass
class _Table:
    """Every list of a check read one way: what a span of the prompt is looked up in."""

    words: dict[str, Hit] = field(default_factory=dict)
    collapsed: dict[str, Hit] = field(default_factory=dict)  #: the words with doubled letters as one
    starts: dict[str, Hit] = field(default_factory=dict)
    ends: dict[str, Hit] = field(default_factory=dict)
    phrases: list[tuple[tuple[frozenset[str], ...], int, Hit]] = field(default_factory=list)
    places: dict[str, list[int]] = field(default_factory=dict)  #: word -> the phrases it stands in
    allow: set[str] = field(default_factory=set)
    allow_runs: list[tuple[str, ...]] = field(default_factory=list)
    start_sizes: list[int] = field(default_factory=list)
    end_sizes: list[int] = field(default_factory=list)
    lengths: frozenset[int] = frozenset()  #: words per run of the multi-word terms
    by_length: dict[int, list[tuple[str, Hit]]] = field(default_factory=dict)  #: one-word terms, for ``s*x``


def _read(term: str, reading: Callable[[str], str]) -> str:
    return " ".join(token for part in clauses(term, reading) for token in part)


@lru_cache(maxsize=256)
def _tables(lists: tuple[TermList, ...]) -> tuple[_Table, ...]:
    """The tables of each reading; a reading whose table equals an earlier one's shares that object (so a prompt
    that reads the same way too is checked once: most prompts are plain ASCII)."""
    tables: list[_Table] = []
    for reading in READINGS:
        table = _table(lists, reading)
        tables.append(next((known for known in tables if known == table), table))
    return tuple(tables)


def _table(lists: tuple[TermList, ...], reading: Callable[[str], str]) -> _Table:
    table = _Table()
    for terms in lists:
        for text, entry in terms.words:
            if read := _read(text, reading):
                table.words.setdefault(read, Hit(terms.name, entry))
                if " " not in read and len(collapse(read)) > 2:  # ``xxx`` would refuse every ``xx``
                    table.collapsed.setdefault(collapse(read), Hit(terms.name, entry))
        for into, pairs in ((table.starts, terms.starts), (table.ends, terms.ends)):
            for text, entry in pairs:
                if read := _read(text, reading):
                    into.setdefault(read, Hit(terms.name, entry))
        for places, entry in terms.phrases:
            read_places = tuple(frozenset(filter(None, (_read(word, reading) for word in place))) for place in places)
            within = PHRASE_GAP_EMOJI if all(is_emoji(w) for place in read_places for w in place) else PHRASE_GAP
            for word in set().union(*read_places):
                table.places.setdefault(word, []).append(len(table.phrases))
            table.phrases.append((read_places, within, Hit(terms.name, entry)))
    for text in {text for terms in lists + tuple(builtin(name) for name in BUILTIN) for text in terms.allow}:
        if read := _read(text, reading):  # harmless everywhere: every built-in list's allow table, always
            if " " in read:
                table.allow_runs.append(tuple(read.split()))
            else:
                table.allow.add(read)
    table.start_sizes, table.end_sizes = sorted({len(k) for k in table.starts}), sorted({len(k) for k in table.ends})
    table.lengths = frozenset(key.count(" ") + 1 for key in table.words)
    for key, hit in [*table.words.items(), *table.starts.items()]:
        if " " not in key:
            table.by_length.setdefault(len(key), []).append((key, hit))
    return table


def _mask(part: list[str], runs: list[tuple[str, ...]]) -> list[str]:
    """The part with each allowed run of words (``pieds nus``, ``à poil long``) blanked out."""
    for run in runs:
        for start in range(len(part) - len(run) + 1):
            if tuple(part[start : start + len(run)]) == run:
                part = part[:start] + [""] * len(run) + part[start + len(run) :]
    return part


def _span_hit(span: str, table: _Table, *, whole: bool = False) -> Hit | None:
    """The term a span carries; ``whole``: only a term that is the whole span (a beginning or an ending too)."""
    variants = _variants(span)
    if not variants.isdisjoint(table.allow):
        return None
    for variant in variants:
        if hit := table.words.get(variant) or (table.starts.get(variant) or table.ends.get(variant) if whole
                                               else None):
            return hit
    single = collapse(span)
    if single != span:  # ``s33x``, ``nuudee``: doubled letters read as one, on both sides
        for variant in _variants(single):
            if variant in table.collapsed:
                return table.collapsed[variant]
    if whole or " " in span:  # a run of words: only a multi-word term matches it
        return None
    for word in (span,) if single == span else (span, single):
        for size in table.start_sizes:
            if (hit := table.starts.get(word[:size])) and len(word) >= size:
                return hit
        for size in table.end_sizes:
            if (hit := table.ends.get(word[-size:])) and len(word) >= size:
                return hit
    return None


def _masked_hit(masked: str, table: _Table) -> Hit | None:
    """The one-word term a starred-out word spells (``s*x``: ``sex``); a word mostly stars spells nothing, and
    neither does one that may as well spell an allowed word (``f*ck``: a curse, not the German ``fick``)."""
    if len(masked) < 3 or masked.count("*") * 2 > len(masked):
        return None
    spelled = re.compile("".join("." if char == "*" else re.escape(char) for char in masked))
    if any(spelled.fullmatch(word) for word in table.allow):
        return None
    return next((hit for key, hit in table.by_length.get(len(masked), ()) if spelled.fullmatch(key)), None)


def _phrase_hit(part: list[str], table: _Table) -> tuple[str, Hit] | None:
    """The first phrase whose words all stand in the part within its gap of each other, in any order."""
    seen: dict[int, list[tuple[int, str]]] = {}  # phrase -> (position, word) of each of its words in the part
    for position, token in enumerate(part):
        for word in _variants(token) if token else ():
            for phrase in table.places.get(word, ()):
                seen.setdefault(phrase, []).append((position, word))
    for phrase, found in seen.items():  # ``found`` is in the order of the part
        places, within, hit = table.phrases[phrase]
        for index, (start, _) in enumerate(found):
            end, window, after = start + len(places) - 1 + within, set(), index
            while after < len(found) and found[after][0] <= end:
                window.add(found[after][1])
                after += 1
            if all(window & place for place in places):
                return " ".join(token for token in part[start : end + 1] if token), hit
    return None


def check_prompt(text: str, terms: Sequence[str] | Sequence[TermList]) -> FilterResult:
    """The forbidden term the prompt carries in any reading, seen through the evasions above.

    ``terms``: term lists, searched in order (or plain terms: one list named ``terms``). Of the spans
    that carry a term, the longest is reported (``n u d e`` reads as ``nude``, not as ``nu``).
    """
    lists = tuple(terms) if all(isinstance(t, TermList) for t in terms) else (
        custom_list("terms", tuple(str(t) for t in terms)),)
    stripped = strip_emphasis(text)
    checked: set[tuple[int, str]] = set()
    for reading, table in zip(READINGS, _tables(lists), strict=True):
        read = reading(stripped)
        if (id(table), read) in checked:
            continue
        checked.add((id(table), read))
        found = _check(read, table)
        if not found.allowed:
            return found
    return FilterResult(True)


def _check(read: str, table: _Table) -> FilterResult:
    parts = [_mask(part, table.allow_runs) for part in _parts(read)]
    tokens = [token for part in parts for token in part if token]
    best: tuple[str, Hit] | None = None
    spans = [(span, False) for span in _spans([t for t in tokens if not is_emoji(t)], table.lengths)]
    spans += [(token, False) for token in tokens if is_emoji(token)] + [(word, True) for word in _joined(read)]
    for span, whole in dict.fromkeys(spans):  # each distinct span once (``a b a b ...`` repeats them)
        hit = _span_hit(span, table, whole=whole)
        if hit and (best is None or len(span) > len(best[0])):
            best = (span, hit)
    for match in MASKED.finditer(read) if best is None else ():
        masked = match.group(0).translate(LEET)
        if hit := _masked_hit(masked, table):
            best = (masked, hit)
            break
    for part in parts if best is None else ():
        if best := _phrase_hit(part, table):
            break
    if best is None:
        return FilterResult(True)
    span, hit = best
    return FilterResult(False, hit.entry.text, span, hit.list_name, hit.entry.cls)
