from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from ponybot.errors import ConfigError
from ponybot.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith(("PONYBOT_", "DISCORD_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_toml_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "mine.toml"
    config.write_text('[limits]\nmax_steps = 40\n[worker]\ndevice = "cuda:1"\n')
    monkeypatch.setenv("PONYBOT_LIMITS__MAX_STEPS", "30")
    settings = load_settings(config)
    assert settings.limits.max_steps == 30  # environment wins over the file
    assert settings.worker.device == "cuda:1"


def test_config_from_env_variable_and_default_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.toml").write_text("[limits]\nmax_count = 3\n")
    assert load_settings().limits.max_count == 3
    other = tmp_path / "other.toml"
    other.write_text("[limits]\nmax_count = 2\n")
    monkeypatch.setenv("PONYBOT_CONFIG", str(other))
    assert load_settings().limits.max_count == 2


def test_discord_token_from_plain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().discord.token is None
    with pytest.raises(ConfigError, match="DISCORD_TOKEN"):
        load_settings().require_discord_token()
    monkeypatch.setenv("DISCORD_TOKEN", "abc.def")
    assert load_settings().require_discord_token() == "abc.def"
    assert "abc.def" not in repr(load_settings())


@pytest.mark.parametrize(
    ("toml", "key", "allowed"),
    [
        ("[limits]\nmax_steps = 500\n", "limits.max_steps", "less than or equal to 150"),
        ('[worker]\ndevice = "tpu"\n', "worker.device", "auto, cpu, cuda, cuda:N or mps"),
        ('[defaults]\nsampler = "plms"\n', "defaults.sampler", "'ddim', 'euler_a' or 'dpmpp_2m_karras'"),
        ('[defaults]\nsize = "500x500"\n', "defaults.size", "multiple of 64"),
        ("[limits]\nmax_stepz = 5\n", "limits.max_stepz", "unknown setting"),
        ('[redis]\nsentinels = ["sentinel-0"]\n', "redis.sentinels", "'sentinel-0' is not host:port"),
        ('[redis]\nsentinels = ["s:99999"]\n', "redis.sentinels", "is not host:port"),
        ("[worker]\ncpu_threads = -1\n", "worker.cpu_threads", "greater than or equal to 0"),
        ("[safety]\nnsfwjs_thresholds = { Nude = 0.5 }\n", "safety.nsfwjs_thresholds",
         "the classes: Drawing, Hentai, Neutral, Porn, Sexy"),
        ("[safety]\nnsfwjs_thresholds = { Porn = 1.5 }\n", "safety.nsfwjs_thresholds", "between 0 and 1"),
        ('[safety]\nrequired = ["wd14"]\n', "safety", "the checks: tagger, nsfwjs, opennsfw"),
        ('[safety]\nnsfwjs = false\nrequired = ["nsfwjs"]\n', "safety", "nsfwjs is turned off"),
    ],
)
def test_bad_value_names_key_and_what_is_allowed(tmp_path: Path, toml: str, key: str, allowed: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert key in str(caught.value)
    assert allowed in str(caught.value)


def test_missing_and_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[limits\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken)


def _flatten(model: BaseModel | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    items = model.model_dump(mode="json") if isinstance(model, BaseModel) else model
    flat: dict[str, Any] = {}
    for key, value in items.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_example_config_lists_every_setting_with_its_default() -> None:
    """config.example.toml and Settings agree: same keys, each default as written, each commented."""
    text = (ROOT / "config.example.toml").read_text()
    lines = text.splitlines()
    documented = _flatten(tomllib.loads(text))
    defaults = _flatten(Settings())
    unset = {key for key, value in defaults.items() if value is None}
    assert set(documented) == set(defaults) - unset
    for key in documented:
        assert documented[key] == defaults[key], key
    for key in unset:  # settings without a default are shown commented out
        leaf = key.rsplit(".", 1)[1]
        assert any(line.startswith(f"# {leaf} = ") for line in lines), key
    for index, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[index - 1].startswith("#"), f"no comment above {line!r}"


def test_defaults_must_fit_limits(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[limits]\nmax_steps = 20\n")
    with pytest.raises(ConfigError, match=r"defaults.steps \(25\) is above limits.max_steps"):
        load_settings(config)


def test_sentinels_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PONYBOT_REDIS__SENTINELS", "sentinel-0:26379, sentinel-1:26379")
    assert load_settings().redis.sentinels == ["sentinel-0:26379", "sentinel-1:26379"]
    monkeypatch.setenv("PONYBOT_REDIS__SENTINELS", '["[::1]:26379"]')
    assert load_settings().redis.sentinels == ["[::1]:26379"]
    monkeypatch.setenv("PONYBOT_REDIS__SENTINELS", "[oops")
    with pytest.raises(ConfigError, match=r"redis\.sentinels: .*neither a JSON list nor comma-separated"):
        load_settings()
