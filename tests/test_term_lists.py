"""The term lists' rules, each shown both ways: compounds and their allow list, inflections, phrases,
doubled letters and emoji, strictness, NSFW channels, the moderator's and the operator's own lists."""

from __future__ import annotations

import tomllib

import pytest
from pydantic import ValidationError

from ponybot.errors import ConfigError
from ponybot.policy import Mode, PolicyRules, Strictness, resolve
from ponybot.prompt_filter import check_prompt
from ponybot.settings import PolicySettings
from ponybot.term_lists import builtin_lists, parse_list

POLICY = PolicySettings()
STANDARD = builtin_lists(False)

COMPOUNDS = """
allow = ["nacktschnecke", "nackte wande"]
[inflections]
adj = ["", "e", "em", "en", "er", "es"]
[[group]]
class = "nudity"
terms = ["nackt*", "*nackt/adj", "*sex"]
"""


@pytest.mark.parametrize(("prompt", "with_allow", "without_allow"), [
    ("ein Nacktfoto", False, False),  # a compound the stem begins: refused
    ("Stute, splitternackte", False, False),  # a compound the stem ends, inflected
    ("Gruppensex", False, False),
    ("eine Nacktschnecke im Salat", True, False),  # harmless only because the allow list names it
    ("nackte Wände im Schloss", True, False),  # a run of words the allow list names
    ("Schnecken im Garten", True, True),
])
def test_compound_stems_and_their_allow_list(prompt: str, with_allow: bool, without_allow: bool,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from ponybot import prompt_filter

    monkeypatch.setattr(prompt_filter, "BUILTIN", ())  # only this list's allow table, not the built-in lists'
    data = tomllib.loads(COMPOUNDS)
    assert check_prompt(prompt, [parse_list("test", data)]).allowed is with_allow
    data["allow"] = []
    assert check_prompt(prompt, [parse_list("bare", data)]).allowed is without_allow


@pytest.mark.parametrize("prompt", [
    "nackt", "nackte Stute", "nacktem Hengst", "nackten Stuten", "nackter Hengst", "nacktes Pony", "NACKTE",
    "entblößte Stute", "entblosste Stute", "nue", "nus", "nues", "déshabillée", "deshabillees", "dévêtue",
])
def test_inflections_and_accent_folding(prompt: str) -> None:
    assert not check_prompt(prompt, STANDARD).allowed


@pytest.mark.parametrize(("prompt", "allowed"), [
    ("pony with no clothes", False),
    ("clothes: none", False),
    ("without any clothes, pony", False),  # a word between
    ("her clothes are gone", False),  # the other order
    ("Stute ohne jede Kleidung", False),
    ("keine Kleidung, Stute", False),
    ("Rarity ne porte rien", False),
    ("jument sans aucun vêtement", False),
    ("a pony without a hat, clothes shop in the background", True),  # a comma ends the phrase
    ("no background, pony wearing clothes", True),
    ("Applejack ohne Hut", True),
    ("jument sans ailes", True),
])
def test_phrases_in_any_order_within_one_part(prompt: str, allowed: bool) -> None:
    assert check_prompt(prompt, STANDARD).allowed is allowed, check_prompt(prompt, STANDARD)


@pytest.mark.parametrize(("prompt", "allowed"), [
    ("s33x", False), ("p00rn", False), ("nuudee", False), ("b00bs", False), ("sexxy", False), ("n00dz", False),
    ("na-ked", False), ("por.no", False), ("€xplicit", False), ("s*x", False), ("p*rn", False), ("n*de pony", False),
    ("f*ck this rain", True), ("5*5 apples", True), ("rarity * applejack", True), ("twilight*", True),
    ("cook a meal", True), ("a book", True), ("annals of equestria", True), ("lollipop", True),
    ("Sexey-les-Bois", True),
    ("🔞", False), ("🍆💦", False), ("🍑 💦", False), ("🍆 and 🍑", False),
    ("🍑", True), ("a peach 🍑 orchard", True), ("rain 💦", True), ("🍆 eggplants, then later watering 💦", True),
])
def test_doubled_letters_leet_and_emoji(prompt: str, allowed: bool) -> None:
    assert check_prompt(prompt, STANDARD).allowed is allowed, check_prompt(prompt, STANDARD)


@pytest.mark.parametrize(("prompt", "standard", "strict"), [
    ("rarity in lingerie", True, False),
    ("suggestive, fluttershy", True, False),
    ("Stute in Reizwäsche", True, False),
    ("rarity 🫦", True, False),
    ("explicit, fluttershy", False, False),
    ("twilight reading", True, True),
])
def test_strict_adds_its_entries(prompt: str, standard: bool, strict: bool) -> None:
    for strictness, allowed in ((Strictness.STANDARD, standard), (Strictness.STRICT, strict)):
        policy = resolve(PolicyRules(strictness=strictness), age_restricted=False, settings=POLICY)
        assert check_prompt(prompt, policy.term_lists()).allowed is allowed, (prompt, strictness)


def test_every_language_applies_in_every_sfw_channel_and_none_in_nsfw() -> None:
    sfw = resolve(PolicyRules(), age_restricted=False, settings=POLICY)
    nsfw = resolve(PolicyRules(mode=Mode.NSFW), age_restricted=True, settings=POLICY)
    for prompt, language in (("naked mare", "en"), ("nackte Stute", "de"), ("jument nue", "fr"),
                             ("clop, mare", "fandom"), ("🔞 mare", "emoji")):
        assert check_prompt(prompt, sfw.term_lists()).list_name in (language, "sfw"), prompt
        assert check_prompt(prompt, nsfw.term_lists()).allowed, prompt
    assert not check_prompt("nude filly", nsfw.term_lists()).allowed  # the NSFW list still stands


def test_moderator_terms_name_their_list() -> None:
    policy = resolve(PolicyRules(forbidden_terms=["spinne*", "wasps"]), age_restricted=False, settings=POLICY)
    result = check_prompt("eine Spinnennetz-Party", policy.term_lists())
    assert (result.list_name, result.term, result.cls) == ("channel", "spinne*", "custom")
    assert check_prompt("nude", policy.term_lists()).list_name == "sfw"  # the operator's own list comes first


def test_operator_chooses_the_builtin_lists() -> None:
    english_only = PolicySettings(term_lists=["en"])
    policy = resolve(PolicyRules(), age_restricted=False, settings=english_only)
    assert check_prompt("jument nue", policy.term_lists()).allowed
    assert not check_prompt("naked mare", policy.term_lists()).allowed
    with pytest.raises(ValidationError, match="no built-in term list named klingon"):
        PolicySettings(term_lists=["en", "klingon"])
    with pytest.raises(ValidationError, match=r"no built-in term list named en \(known: young\)"):
        PolicySettings(nsfw_term_lists=["en"])  # the SFW lists would refuse what an NSFW channel allows


@pytest.mark.parametrize(("data", "message"), [
    ({"group": [{"class": "nudity", "terms": ["nackt/adj"]}]}, "names the inflection table “adj”"),
    ({"group": [{"terms": ["x"]}]}, "needs a class of nudity, genitals"),
    ({"group": [{"class": "naughty", "terms": ["x"]}]}, "has 'naughty', 'standard'"),
    ({"group": [{"class": "sex", "level": "extreme", "terms": ["x"]}]}, "has 'sex', 'extreme'"),
    ({"group": [{"class": "sex", "phrases": ["alone"]}]}, "two or more places"),
    ({"inflections": {"adj": [""], "allow": ["x"]}}, "“allow” stands under \\[inflections\\]"),
    ({"inflections": {"adj": "e"}}, "each inflection table is a list of endings"),
    ({"allows": []}, "unknown keys allows"),
])
def test_a_malformed_list_names_what_is_wrong(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_list("broken", data)
