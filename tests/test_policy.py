"""Channel policy: resolution, the prompt filter, the store, the worker's enforcement, the classifiers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
from PIL import Image

from ponybot import keys
from ponybot.policy import (
    FlaggedAction,
    Mode,
    PolicyRules,
    Strictness,
    apply,
    effective_mode,
    resolve,
    warm_prompt_filter,
)
from ponybot.policy_store import PolicyStore
from ponybot.prompt_filter import _tables, check_prompt
from ponybot.queue import enqueue
from ponybot.schemas import Job, JobEvent, Origin, build_request
from ponybot.settings import LimitSettings, PolicySettings, Settings
from ponybot.status import SafetyState
from tests.conftest import cli_env, run_cli
from worker.runner import GenerationWorker
from worker.runtime import WorkerRuntime
from worker.safety import Verdict

POLICY = PolicySettings()
SFW_TERMS = POLICY.always_forbidden_terms + POLICY.sfw_forbidden_terms


@pytest.mark.parametrize(
    ("configured", "age_restricted", "expected"),
    [
        (Mode.SFW, False, Mode.SFW),
        (Mode.SFW, True, Mode.SFW),  # a moderator can keep an age-restricted channel SFW
        (Mode.NSFW, False, Mode.SFW),  # Discord allows NSFW only in age-restricted channels
        (Mode.NSFW, True, Mode.NSFW),
    ],
)
def test_effective_mode(configured: Mode, age_restricted: bool, expected: Mode) -> None:
    assert effective_mode(configured, age_restricted) is expected
    assert resolve(PolicyRules(mode=configured), age_restricted=age_restricted, settings=POLICY).mode is expected


def test_default_is_sfw_everywhere() -> None:
    assert resolve(PolicyRules(), age_restricted=True, settings=POLICY).mode is Mode.SFW


EVASIONS = [
    "nude pony", "NUDE pony", "(nude:1.4) pony", "[[nude]] pony", "((nude)) pony", "\\(nude\\) pony",
    "n u d e pony", "n.u.d.e pony", "n-u-d-e pony", "n_u_d_e pony", "nu de pony", "nuuuude pony",
    "nu\u200bde pony", "n\u200du\u200dd\u200de pony", "ｎｕｄｅ pony", "𝐧𝐮𝐝𝐞 pony", "ⓝⓤⓓⓔ pony", "nüdé pony",
    "nudе pony",  # Cyrillic е
    "пude pony",  # Cyrillic п
    "nud3 pony", "s3x", "p0rn", "pornography", "PORNO", "nudes", "naked, pony", "pony,explicit",
    "hentai:1.2", "(explicit:0.5), safe", "e x p l i c i t", "n\u00adude",
]
HARMLESS = [
    "pinkie pie at a class party", "twilight sparkle reading in the grass", "rainbow dash passing by",
    "applejack in sussex and essex", "rarity's sextant and a compass", "analysis of a canal, banal",
    "a pen is on the table", "cucumber sandwiches and documents", "grape juice and drapes",
    "title card, titanic, petite filly", "scunthorpe", "a cocktail at the nudibranch aquarium",
    "sexagesimal clock", "tea with a nun", "the pony is a mayor, not a minor character",
]


@pytest.mark.parametrize("prompt", EVASIONS)
def test_evasions_refused(prompt: str) -> None:
    result = check_prompt(prompt, SFW_TERMS)
    assert not result.allowed, prompt
    assert result.term and result.term in str(result.reason)


@pytest.mark.parametrize("prompt", HARMLESS)
def test_harmless_prompts_allowed(prompt: str) -> None:
    assert check_prompt(prompt, SFW_TERMS).allowed, check_prompt(prompt, SFW_TERMS)


#: Letters of other scripts that look like Latin ones, read through Unicode's confusables or anyascii.
LOOKALIKES = {
    "Cyrillic": "nudе pony",  # е U+0435
    "Greek": "hεntai",  # ε U+03B5
    "Armenian": "ոսde",  # ո U+0578, ս U+057D
    "Lisu": "ꓠꓴꓓꓰ",  # U+A4E0 U+A4F4 U+A4D3 U+A4F0
    "Coptic": "ⲛⲩⲇⲉ",  # U+2C9B U+2CA9 U+2C87 U+2C89
    "Cherokee": "ᏚEX",  # U+13DA
    "Latin small capitals": "ɴᴜᴅᴇ",
}


@pytest.mark.parametrize("script", LOOKALIKES)
def test_lookalikes_of_other_scripts_refused(script: str) -> None:
    prompt = LOOKALIKES[script]
    assert any(not c.isascii() for c in prompt)
    assert not check_prompt(prompt, SFW_TERMS).allowed, (script, prompt)


def test_shapes_table_holds_only_what_unicode_data_misses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each entry of the small supplement is needed: without it, no reading catches its letter."""
    from ponybot import prompt_filter

    spelled = {"п": "пude", "ь": "questionaьle", "β": "questionaβle", "χ": "eχplicit", "ω": "nsfω"}
    assert set(spelled) == {chr(c) for c in prompt_filter.SHAPES}
    for word in spelled.values():
        assert not check_prompt(word, SFW_TERMS).allowed
    monkeypatch.setattr(prompt_filter, "SHAPES", {})
    for word in spelled.values():
        assert check_prompt(word, SFW_TERMS).allowed, word


def test_nsfw_channels_refuse_young_characters_and_allow_adult_terms() -> None:
    nsfw = resolve(PolicyRules(mode=Mode.NSFW), age_restricted=True, settings=POLICY)
    terms = nsfw.forbidden_terms
    assert not check_prompt("nude filly", terms).allowed
    assert not check_prompt("explicit, loli", terms).allowed
    assert check_prompt("nude mare, explicit", terms).allowed


def test_apply_sfw_and_nsfw() -> None:
    request = build_request(LimitSettings(), prompt="pinkie pie", negative_prompt="blurry, nude")
    sfw = apply(resolve(PolicyRules(), age_restricted=False, settings=POLICY), request, quality=True)
    assert sfw.allowed  # the negative prompt may name what it suppresses
    assert sfw.prompt == "safe, derpibooru_p_95, pinkie pie"
    assert sfw.negative_prompt.startswith("blurry, nude, derpibooru_p_low, nsfw, explicit")
    nsfw = apply(resolve(PolicyRules(mode=Mode.NSFW), age_restricted=True, settings=POLICY), request, quality=False)
    assert nsfw.prompt == "pinkie pie" and nsfw.negative_prompt == "blurry, nude"


def test_caps_and_extra_terms() -> None:
    rules = PolicyRules(max_steps=10, forbidden_terms=["spiders"], negative_prompt="spider")
    policy = resolve(rules, age_restricted=False, settings=POLICY)
    limits = LimitSettings()
    steps = apply(policy, build_request(limits, prompt="x", steps=20), quality=False)
    assert not steps.allowed and steps.field == "steps" and "at most 10 steps" in str(steps.reason)
    spider = apply(policy, build_request(limits, prompt="two spiders", steps=5), quality=False)
    assert not spider.allowed and "spiders" in str(spider.reason)
    fine = apply(policy, build_request(limits, prompt="a cat", steps=5), quality=False)
    assert fine.allowed and fine.negative_prompt.endswith("spider")


def test_store_merges_and_audits(conn: redis.Redis) -> None:
    store = PolicyStore(conn)
    store.set_guild(1, PolicyRules(mode=Mode.NSFW, cooldown_s=30), by=10)
    store.set_channel(1, 2, PolicyRules(mode=Mode.SFW, max_steps=20), by=11)
    store.set_channel(1, 2, PolicyRules(max_count=2), by=11)
    merged = store.rules_for(1, 2)
    assert (merged.mode, merged.cooldown_s, merged.max_steps, merged.max_count) == (Mode.SFW, 30, 20, 2)
    assert store.rules_for(1, 3).mode is Mode.NSFW
    store.reset_channel(1, 2, by=12)
    assert store.rules_for(1, 2).mode is Mode.NSFW
    history = store.history(1)
    assert [entry.user_id for entry in history] == [12, 11, 11, 10]
    assert history[1].before == {"mode": "sfw", "max_steps": 20}
    assert history[1].after == {"mode": "sfw", "max_steps": 20, "max_count": 2}


class FlagAll:
    name = "flag-all"
    state = SafetyState(classifiers=["flag-all"])

    def classify(self, images: list[Image.Image], strictness: Strictness = Strictness.STANDARD) -> list[Verdict]:
        return [Verdict(True)] * len(images)


class Broken:
    name = "broken"
    state = SafetyState(classifiers=["broken"])

    def classify(self, images: list[Image.Image], strictness: Strictness = Strictness.STANDARD) -> list[Verdict]:
        raise RuntimeError("onnxruntime fell over")


def run_channel_job(conn: redis.Redis, settings: Settings, runtime: WorkerRuntime, *, nsfw: bool,
                    count: int = 2, prompt: str = "pony") -> JobEvent:
    origin = Origin(guild_id=1, channel_id=2, channel_nsfw=nsfw, user_id=3)
    job = Job.create(build_request(settings.limits, prompt=prompt, steps=3, width=256, height=256, count=count),
                     origin=origin)
    enqueue(conn, job, max_queue=10, result_ttl_s=60)
    GenerationWorker(runtime).work(burst=True)
    return JobEvent.model_validate_json(conn.xrange(keys.EVENTS_STREAM)[-1][1][b"data"])


@pytest.mark.parametrize(("nsfw", "prompt", "refused_as"), [
    (False, "nackte Stute am See", "nackte"),  # a German prompt in an SFW channel: the worker refuses it too
    (False, "jument 🍆💦", "🍆 💦"),
    (True, "nackte Stute am See", None),  # NSFW: the sexual-content lists do not apply
    (True, "nackte Fohlen am See", "fohlen"),  # NSFW: young characters, in German too
])
def test_worker_applies_every_language_list(conn: redis.Redis, settings: Settings, runtime: WorkerRuntime,
                                            nsfw: bool, prompt: str, refused_as: str | None) -> None:
    if nsfw:
        PolicyStore(conn).set_channel(1, 2, PolicyRules(mode=Mode.NSFW), by=9)
    event = run_channel_job(conn, settings, runtime, nsfw=nsfw, count=1, prompt=prompt)
    if refused_as is None:
        assert event.kind == "done" and event.error_code is None
    else:
        assert event.kind == "failed" and event.error_code == "policy"
        assert event.reason is not None and event.reason.params["term"] == refused_as


@pytest.mark.parametrize("classifier", [FlagAll(), Broken(), None])
def test_flagged_or_unknown_images_withheld_in_sfw(conn: redis.Redis, settings: Settings, runtime: WorkerRuntime,
                                                   classifier: Any) -> None:
    runtime.classifier = classifier
    event = run_channel_job(conn, settings, runtime, nsfw=False)
    assert event.kind == "done"
    assert event.withheld == 2
    assert all(image.key is None for image in event.images)
    assert not conn.keys("ponybot:image:*")  # nothing that could be posted was even stored


def test_flagged_images_spoilered_in_nsfw(conn: redis.Redis, settings: Settings, runtime: WorkerRuntime) -> None:
    PolicyStore(conn).set_channel(1, 2, PolicyRules(mode=Mode.NSFW, flagged=FlaggedAction.SPOILER), by=9)
    runtime.classifier = FlagAll()
    event = run_channel_job(conn, settings, runtime, nsfw=True)
    assert event.withheld == 0
    assert all(image.spoiler and image.key for image in event.images)
    assert not event.prompt.startswith("safe")


def test_real_classifier_runs_offline_on_a_generated_image(generator: Any, classifier: Any) -> None:
    from ponybot.schemas import GenerationRequest

    request = GenerationRequest(prompt="pony", steps=3, width=512, height=512)
    image = generator.generate(request, seed=1, prompt="pony", negative_prompt="").images[0]
    assert [verdict.flagged for verdict in classifier.classify([image])] == [False]
    (verdict,) = classifier.classify([Image.new("RGB", (512, 512), (200, 160, 140))])
    assert verdict.flagged in (True, False)
    assert [reading.classifier for reading in verdict.readings] == ["nsfwjs", "opennsfw"]  # both shipped, both ran


def test_policy_check_cli(tmp_path: Path, model_cache: Path) -> None:
    env = cli_env(None, model_cache)
    refused = run_cli(["policy", "check", "(n u d e:1.2), pinkie pie"], env, tmp_path)
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["allowed"] is False
    assert "nude" in json.loads(refused.stdout)["reason"]
    assert json.loads(refused.stdout)["matched"] == {"list": "sfw", "entry": "nude", "class": "custom", "found": "nude"}
    german = run_cli(["policy", "check", "nackte Stute"], env, tmp_path)
    assert json.loads(german.stdout)["matched"]["list"] == "de" and german.returncode == 1
    strict = run_cli(["policy", "check", "rarity in lingerie", "--strictness", "strict"], env, tmp_path)
    assert json.loads(strict.stdout)["matched"]["class"] == "suggestive" and strict.returncode == 1
    allowed = run_cli(["policy", "check", "pinkie pie in class"], env, tmp_path)
    assert allowed.returncode == 0
    output = json.loads(allowed.stdout)
    assert output["prompt"] == "safe, derpibooru_p_95, pinkie pie in class"
    assert "nudity" in output["negative_prompt"]
    nsfw = run_cli(["policy", "check", "nude mare", "--mode", "nsfw"], env, tmp_path)
    assert nsfw.returncode == 0 and json.loads(nsfw.stdout)["prompt"] == "derpibooru_p_95, nude mare"


@pytest.mark.parametrize("strictness", list(Strictness))
@pytest.mark.parametrize("age_restricted", [False, True])
def test_the_prompt_filter_is_built_before_the_first_job(age_restricted: bool, strictness: Strictness) -> None:
    """warm_prompt_filter (a worker's start-up) builds the tables a channel no moderator changed is checked
    against, so the first job there builds nothing (it cost each worker about 0.3 s of CPU in its first job)."""
    settings = Settings.model_validate({}).policy
    _tables.cache_clear()
    warm_prompt_filter(settings)
    built = _tables.cache_info().misses
    policy = resolve(PolicyRules(strictness=strictness), age_restricted=age_restricted, settings=settings)
    assert check_prompt("pinkie pie in a meadow", policy.term_lists()).allowed
    assert _tables.cache_info().misses == built
