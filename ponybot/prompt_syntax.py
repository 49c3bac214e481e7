"""A1111's prompt emphasis syntax: ``(word)``, ``(word:1.3)``, ``[word]``, ``\\(`` escapes, ``BREAK``.

Pure text, so the worker's encoder and the policy's term matcher read prompts the same way.
"""

from __future__ import annotations

import re

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
#: The run ``BREAK`` becomes: the encoder starts a new 75-token chunk there.
BREAK = ("BREAK", -1.0)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")

_ATTENTION = re.compile(
    r"""
    \\\(|\\\)|\\\[|\\]|\\\\|\\|   # escaped brackets and backslashes
    \(|\[|                         # openers
    :\s*([+-]?[.\d]+)\s*\)|        # ':1.3)' closes with an explicit weight
    \)|]|                          # closers
    [^\\()\[\]:]+|                 # plain text
    :                              # a lone colon is text
    """,
    re.VERBOSE,
)


def parse_emphasis(text: str) -> list[tuple[str, float]]:
    """Split ``text`` into runs of (text, weight), as A1111's ``parse_prompt_attention`` does."""
    runs: list[list[str | float]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for run in runs[start:]:
            if tuple(run) != BREAK:  # a BREAK inside brackets still breaks
                run[1] = float(run[1]) * factor

    for match in _ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            runs.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(runs))
        elif token == "[":
            square_open.append(len(runs))
        elif weight is not None and round_open:
            multiply(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            multiply(round_open.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_open:
            multiply(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            for index, part in enumerate(_BREAK.split(token)):
                if index:
                    runs.append(list(BREAK))
                if part:
                    runs.append([part, 1.0])
    for start in round_open:
        multiply(start, ROUND_MULTIPLIER)
    for start in square_open:
        multiply(start, SQUARE_MULTIPLIER)

    merged: list[tuple[str, float]] = []
    for run_text, run_weight in runs:
        if merged and merged[-1][1] == run_weight and BREAK not in (merged[-1], (run_text, run_weight)):
            merged[-1] = (merged[-1][0] + str(run_text), float(run_weight))
        else:
            merged.append((str(run_text), float(run_weight)))
    return merged or [("", 1.0)]


def strip_emphasis(text: str) -> str:
    """The prompt's words without the emphasis syntax (what the policy matcher reads)."""
    return "".join(" " if run == BREAK else run[0] for run in parse_emphasis(text))
