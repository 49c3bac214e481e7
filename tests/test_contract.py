from __future__ import annotations

import json
import re

import pytest

from ponybot.errors import InvalidRequestError, SchemaVersionError
from ponybot.parameters import format_parameters, parse_parameters
from ponybot.schemas import SCHEMA_VERSION, Job, build_request
from ponybot.settings import LimitSettings

LIMITS = LimitSettings()
GOOD = {"prompt": "pinkie pie"}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("prompt", "", "at least 1 character"),
        ("prompt", "   ", "must not be empty"),
        ("prompt", "a" * 1001, "at most 1000 characters"),
        ("negative_prompt", "a" * 1001, "at most 1000 characters"),
        ("steps", 0, "greater than or equal to 1"),
        ("steps", 51, "at most 50 on this bot"),
        ("cfg", 0.5, "greater than or equal to 1"),
        ("cfg", 20.5, "less than or equal to 20"),
        ("width", 300, "multiple of 64"),
        ("height", 192, "multiple of 64 from 256 to 1024"),
        ("width", 1088, "multiple of 64 from 256 to 1024"),
        ("count", 0, "greater than or equal to 1"),
        ("count", 5, "less than or equal to 4"),
        ("seed", -1, "greater than or equal to 0"),
        ("seed", 2**32, "less than or equal to 4294967295"),
        ("sampler", "plms", "'ddim', 'euler_a' or 'dpmpp_2m_karras'"),
        ("clip_skip", 3, "1 or 2"),
    ],
)
def test_each_bound_refused_naming_the_option(field: str, value: object, message: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        build_request(LIMITS, **{**GOOD, field: value})
    assert caught.value.field == field
    assert message in str(caught.value)


def test_pixel_budget_names_size() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        build_request(LIMITS, prompt="x", width=1024, height=768)
    assert caught.value.field == "size"
    assert "589,824 pixels" in str(caught.value)
    assert build_request(LIMITS, prompt="x", width=768, height=768).width == 768


def test_operator_limits_apply() -> None:
    limits = LimitSettings(max_steps=20, max_count=2)
    with pytest.raises(InvalidRequestError, match="steps: at most 20"):
        build_request(limits, prompt="x", steps=21)
    with pytest.raises(InvalidRequestError, match="count: at most 2"):
        build_request(limits, prompt="x", steps=10, count=3)


def test_random_seed_chosen_once_and_reported() -> None:
    job = Job.create(build_request(LIMITS, prompt="x", count=3))
    assert 0 <= job.seed < 2**32
    assert [job.image_seed(i) for i in range(3)] == [job.seed, job.seed + 1, job.seed + 2]
    again = Job.model_validate_json(job.model_dump_json())
    assert again.seed == job.seed and again == job


def test_other_schema_version_refused_loudly() -> None:
    data = json.loads(Job.create(build_request(LIMITS, prompt="x", seed=1)).model_dump_json())
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(SchemaVersionError, match="same ponybot version"):
        Job.model_validate_json(json.dumps(data))


def test_parameters_round_trip() -> None:
    job = Job.create(build_request(LIMITS, prompt="pinkie pie, smiling", negative_prompt="blurry", seed=7, count=2))
    parsed = parse_parameters(format_parameters(job, 1, "pinkie pie, smiling", "blurry", "pony-v4"))
    assert parsed["prompt"] == "pinkie pie, smiling"
    assert parsed["negative_prompt"] == "blurry"
    assert parsed["Seed"] == "8"
    assert parsed["Sampler"] == "DDIM"
    assert parsed["Clip skip"] == "2"
    assert parsed["Job"] == job.id
    assert parsed["Size"] == "512x512"


#: A1111's own reader (modules/infotext_utils.parse_generation_parameters), rewritten here independently.
A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def a1111_parse(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    prompt, negative, done_with_prompt = "", "", False
    *lines, last = text.strip().split("\n")
    if len(A1111_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    fields["Prompt"], fields["Negative prompt"] = prompt, negative
    for key, value in A1111_PARAM.findall(last):
        fields[key] = value
    return fields


@pytest.mark.parametrize(
    ("prompt", "negative"),
    [
        ("pony\nNegative prompt: x\nSteps: 99, Seed: 1, Sampler: Euler, CFG scale: 3, Size: 64x64", "blurry"),
        ("Negative prompt: evil, Steps: 99, Seed: 1", "blurry\nSteps: 99, Seed: 1, Model: forged, Job: x"),
        ("pony", "lowres\n\nNegative prompt: again\nSteps: 1, Sampler: Euler, Seed: 1"),
    ],
)
def test_prompt_lines_cannot_pose_as_other_fields(prompt: str, negative: str) -> None:
    job = Job.create(build_request(LIMITS, prompt=prompt, negative_prompt=negative, seed=5, steps=20))
    text = format_parameters(job, 0, prompt, negative, "pony-v4")
    for parsed in (a1111_parse(text), parse_parameters(text)):
        values = {key.lower(): value for key, value in parsed.items()}
        assert values["steps"] == "20" and values["seed"] == "5" and values["model"] == "pony-v4"
        assert values["sampler"] == "DDIM" and values["job"] == job.id
        # the same words (CLIP reads a newline as a space and lower-cases everything)
        assert values["prompt"].lower().split() == prompt.lower().split()
        assert values["negative prompt" if "negative prompt" in values else "negative_prompt"].split() == \
            negative.split()


@pytest.mark.parametrize(("field", "value", "shown"), [
    ("prompt", "pony \x1b[31mred", "U+001B"),
    ("prompt", "pony\rSteps: 1", "U+000D"),
    ("negative_prompt", "blurry\x00", "U+0000"),
    ("prompt", "pony\u2028Steps: 1", "U+2028"),
    ("negative_prompt", "a\x85b", "U+0085"),
])
def test_control_characters_refused(field: str, value: str, shown: str) -> None:
    options = {"prompt": "pony", field: value}
    expected = re.escape(f"{field}: contains the control character {shown}")
    with pytest.raises(InvalidRequestError, match=expected) as caught:
        build_request(LIMITS, **options)
    assert caught.value.field == field


def test_multi_line_prompts_and_tabs_are_fine() -> None:
    assert build_request(LIMITS, prompt="pinkie pie,\n\tballoons", negative_prompt="a\nb").prompt.count("\n") == 1


def test_long_input_is_not_echoed_whole() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        build_request(LIMITS, prompt="a" * 10_000)
    assert len(str(caught.value)) < 200 and "10,002 characters" in str(caught.value)
