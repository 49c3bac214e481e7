"""The SFW prompt filter's built-in term lists against a corpus of prompts per language.

``tests/data/prompt_corpus/<language>.toml`` holds prompts a member of a pony server would type:
``[refuse.<class>]`` must be refused in every SFW channel (and the built-in lists must name that class),
``[strict.<class>]`` only where a channel is set to ``strict``, ``[allow.<kind>]`` never (harmless prompts
holding a forbidden stem: compounds, place names, words of another language, everyday words).
"""

from __future__ import annotations

import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ponybot.policy import Mode, PolicyRules, Strictness, resolve
from ponybot.prompt_filter import FilterResult, check_prompt
from ponybot.settings import PolicySettings
from ponybot.term_lists import NSFW_LISTS, SFW_LISTS, TermList, builtin_lists

CORPUS = Path(__file__).parent / "data" / "prompt_corpus"
LANGUAGES = sorted(set(path.stem for path in CORPUS.glob("*.toml")) - set(NSFW_LISTS))


def lists(strictness: Strictness) -> tuple[TermList, ...]:
    """Every list an SFW channel at this strictness searches (the operator's defaults and the built-in ones)."""
    return resolve(PolicyRules(strictness=strictness), age_restricted=False, settings=PolicySettings()).term_lists()


def load(language: str) -> dict[str, dict[str, list[str]]]:
    data: dict[str, Any] = tomllib.loads((CORPUS / f"{language}.toml").read_text(encoding="utf-8"))
    return data


def test_the_corpus_covers_every_builtin_list() -> None:
    assert set(LANGUAGES) == set(SFW_LISTS)
    for language in ("en", "de", "fr"):
        corpus = load(language)
        assert {"nudity", "genitals", "sex", "fetish"} <= set(corpus["refuse"]), language
        assert corpus["strict"] and len([p for prompts in corpus["allow"].values() for p in prompts]) >= 10, language


@pytest.mark.parametrize("language", LANGUAGES)
def test_corpus_has_no_bypass_and_no_false_refusal(language: str) -> None:
    corpus = load(language)
    standard, strict = lists(Strictness.STANDARD), lists(Strictness.STRICT)
    counts: Counter[str] = Counter()
    bypasses: list[str] = []
    false_refusals: list[tuple[str, FilterResult]] = []
    wrong_class: list[tuple[str, str, FilterResult]] = []
    for cls, prompts in corpus["refuse"].items():
        for prompt in prompts:
            counts[f"refusals ({cls})"] += 1
            if check_prompt(prompt, standard).allowed or check_prompt(prompt, strict).allowed:
                bypasses.append(prompt)
            own = check_prompt(prompt, builtin_lists(False))  # the built-in lists alone say which class it is
            if own.cls != cls:
                wrong_class.append((prompt, cls, own))
    for cls, prompts in corpus["strict"].items():
        for prompt in prompts:
            counts[f"strict refusals ({cls})"] += 1
            if check_prompt(prompt, strict).allowed:
                bypasses.append(prompt)
            if not (result := check_prompt(prompt, standard)).allowed:
                false_refusals.append((prompt, result))
    for kind, prompts in corpus["allow"].items():
        for prompt in prompts:
            counts[f"harmless ({kind})"] += 1
            for level in (standard, strict):
                if not (result := check_prompt(prompt, level)).allowed:
                    false_refusals.append((prompt, result))
    print(f"\n{language}: " + ", ".join(f"{name}: {count}" for name, count in sorted(counts.items()))
          + f"; bypasses: {len(bypasses)}, false refusals: {len(false_refusals)}, wrong class: {len(wrong_class)}")
    assert bypasses == []
    assert false_refusals == []
    assert wrong_class == []


def test_young_characters_refused_in_nsfw_channels_in_every_language() -> None:
    corpus = load("young")
    nsfw = resolve(PolicyRules(mode=Mode.NSFW), age_restricted=True, settings=PolicySettings()).term_lists()
    sfw = resolve(PolicyRules(), age_restricted=False, settings=PolicySettings()).term_lists()
    bypasses = [prompt for prompt in corpus["refuse"]["young"] if check_prompt(prompt, nsfw).allowed]
    false_refusals = [(prompt, check_prompt(prompt, nsfw)) for prompts in corpus["allow"].values()
                      for prompt in prompts if not check_prompt(prompt, nsfw).allowed]
    print(f"\nyoung (NSFW): refusals: {len(corpus['refuse']['young'])}, harmless: "
          f"{sum(map(len, corpus['allow'].values()))}; bypasses: {len(bypasses)}, false refusals: "
          f"{len(false_refusals)}")
    assert bypasses == [] and false_refusals == []
    assert check_prompt("a filly and her friends at school", sfw).allowed  # SFW: young ponies are fine
