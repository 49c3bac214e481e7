"""``ponybot init``: a commented config.toml for this machine, never over an existing file."""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path
from typing import Any

import pytest

from ponybot.commands import init_cli
from tests.conftest import cli_env


def operator_env(model_cache: Path, **extra: str) -> dict[str, str]:
    """The tests' environment less the model source the example's [models.pony-v4] table sets."""
    env = cli_env(None, model_cache, **extra)
    del env["PONYBOT_MODEL__SOURCE"]
    return env


@pytest.mark.parametrize(("gpu", "flags", "device", "source"), [
    (False, [], "cpu", "tiny"),
    (True, [], "cuda", "AstraliteHeart/pony-diffusion-v4"),
    (True, ["--tiny"], "cuda", "tiny"),
    (False, ["--no-tiny"], "cpu", "AstraliteHeart/pony-diffusion-v4"),
], ids=["cpu", "gpu", "gpu-tiny", "cpu-full"])
def test_init_writes_what_it_detects(gpu: bool, flags: list[str], device: str, source: str, tmp_path: Path,
                                     model_cache: Path, run_main: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(init_cli, "gpu_present", lambda: gpu)  # no GPU can exist on the test machine
    env = operator_env(model_cache, DISCORD_TOKEN="from-the-environment")
    with socket.socket() as busy:  # the gallery's default port taken: init picks the next free one
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env["PONYBOT_GALLERY__PORT"] = str(port)
        result = run_main(["init", *flags], env, tmp_path)
    assert result.returncode == 0, result.stderr
    written = (tmp_path / "config.toml").read_text()
    config = tomllib.loads(written)
    assert config["worker"]["device"] == device
    assert config["models"]["pony-v4"]["source"] == source
    assert config["gallery"]["port"] != port and config["gallery"]["port"] > 0
    assert "token" not in config["discord"]  # the environment has it: the file does not repeat the secret
    assert "from-the-environment" not in written
    assert written.count("\n#") > 100  # the example's comments came along
    assert (tmp_path / "config.toml").stat().st_mode & 0o077 == 0
    assert "DISCORD_TOKEN" in result.stdout


def test_init_never_overwrites(tmp_path: Path, model_cache: Path, run_main: Any) -> None:
    mine = tmp_path / "config.toml"
    mine.write_text("[limits]\nmax_steps = 30\n")
    result = run_main(["init"], operator_env(model_cache), tmp_path)
    assert result.returncode == 2
    assert "never overwrites" in result.stderr and "Traceback" not in result.stderr
    assert mine.read_text() == "[limits]\nmax_steps = 30\n"


def test_fill_names_a_key_the_example_lacks() -> None:
    from ponybot.errors import ConfigError

    assert init_cli.fill("[worker]\n# auto or cpu\ndevice = \"auto\"\n", {("worker", "device"): "cpu"}) == (
        "[worker]\n# auto or cpu\ndevice = \"cpu\"\n")
    with pytest.raises(ConfigError, match="no_such_key"):
        init_cli.fill("[worker]\n", {("worker", "no_such_key"): 1})
