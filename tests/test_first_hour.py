"""The operator's guide (docs/first-hour.md), run as written: its ``sh`` blocks as shell commands and its
``discord`` blocks as slash commands, in order, against the fake Discord, from ``ponybot init`` to a first
image. A command changed or broken in the guide breaks this test."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from ponybot.commands.doctor_checks import gpu_visible
from ponybot.redis_server import running_embedded_url
from tests.conftest import PATIENCE_S, cli_env
from tests.discord_fake.server import MANAGE_CHANNELS, MEMBER_PERMISSIONS, MODERATOR, FakeDiscord

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "first-hour.md"
BLOCK = re.compile(r"^```(sh|discord)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def guide_steps() -> list[tuple[str, str]]:
    """(kind, line) for every command of the guide's ``sh`` and ``discord`` blocks, in order."""
    return [(kind, line.strip()) for kind, body in BLOCK.findall(GUIDE.read_text())
            for line in body.splitlines() if line.strip() and not line.strip().startswith("#")]


def slash(line: str) -> tuple[str, str | None, dict[str, str]]:
    """``/policy set mode:sfw`` -> ("policy", "set", {"mode": "sfw"}); values may hold spaces and commas."""
    head, _, rest = line.removeprefix("/").partition(" ")
    subcommand = None
    if rest and ":" not in rest.split(" ", 1)[0]:
        subcommand, _, rest = rest.partition(" ")
    parts = re.split(r"(?:^|\s+)(\w+):", rest)
    return head, subcommand, {key: value.strip() for key, value in zip(parts[1::2], parts[2::2], strict=True)}


def test_the_guide_has_the_steps_the_test_expects() -> None:
    commands = [line for kind, line in guide_steps() if kind == "sh" and line.startswith("ponybot ")]
    assert commands[0] == "ponybot init"
    for needed in ("ponybot doctor", "ponybot invite", "ponybot up"):
        assert needed in commands
    assert any(kind == "discord" and line.startswith("/generate ") for kind, line in guide_steps())
    assert slash("/generate prompt:pinkie pie, balloons cfg:7") == ("generate", None,
                                                                    {"prompt": "pinkie pie, balloons", "cfg": "7"})


async def run(command: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", *command, cwd=cwd, env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), PATIENCE_S * 3)
    return process.returncode or 0, out.decode()


async def wait_until(predicate: Any, what: str, fake: FakeDiscord) -> Any:
    deadline = asyncio.get_running_loop().time() + PATIENCE_S * 4
    while not (result := predicate()):
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"never happened: {what}")
        await asyncio.sleep(0.2)
    return result


async def test_first_hour_as_written(fake: FakeDiscord, model_cache: Path, tmp_path: Path) -> None:
    if gpu_visible():
        pytest.skip("on a GPU host ponybot init keeps the full model, which this test cannot download")
    env = cli_env(None, model_cache, PONYBOT_DISCORD__API_BASE=fake.api_base,
                  PONYBOT_DISCORD__GATEWAY_URL=fake.gateway_url, PONYBOT_LOG__LEVEL="INFO")
    del env["PONYBOT_MODEL__SOURCE"]  # the model is the one ponybot init writes
    env.pop("PONYBOT_REDIS__URL", None)  # and Redis the one ponybot up embeds
    placeholders = {"YOUR_SERVER_ID": str(fake.guild_id)}
    channel = fake.default_channel
    up: asyncio.subprocess.Process | None = None
    said: dict[str, str] = {}
    try:
        for kind, line in guide_steps():
            if kind == "discord":
                name, subcommand, options = slash(line)
                moderator = name == "policy" and subcommand == "set"
                interaction = await fake.slash(name, options, subcommand=subcommand, channel_id=channel,
                                               user=MODERATOR if moderator else None,
                                               permissions=MEMBER_PERMISSIONS | (MANAGE_CHANNELS if moderator
                                                                                 else 0))
                said[line] = (await fake.wait_for(lambda: fake.original(interaction)))["content"]  # noqa: B023
                continue
            words = shlex.split(line)
            if words[0] == "export":
                variable, _, value = words[1].partition("=")
                for placeholder, real in placeholders.items():
                    value = value.replace(placeholder, real)
                env[variable] = value
            elif words == ["ponybot", "up"]:
                log = (tmp_path / "up.log").open("wb")
                up = await asyncio.create_subprocess_exec(sys.executable, "-m", "ponybot", "up", cwd=tmp_path,
                                                          env=env, stdout=log, stderr=log)
                await wait_until(lambda: any(r.method == "PUT" and f"/guilds/{fake.guild_id}/commands" in r.path
                                             for r in fake.requests), "commands synced to the test server", fake)
                await wait_until(lambda: worker_online(tmp_path), "a worker online", fake)
            else:
                assert words[0] == "ponybot", f"the test does not know how to run {line!r}"
                code, out = await run(words, env, tmp_path)
                assert code == 0, f"{line}:\n{out}"
                said[line] = out
        generate = next(line for line in said if line.startswith("/generate "))
        message = await fake.wait_for(lambda: next((m for m in fake.channel_messages(channel) if m["attachments"]),
                                                   None), timeout=PATIENCE_S * 4)
    finally:
        if up is not None and up.returncode is None:
            up.send_signal(signal.SIGINT)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(up.wait(), PATIENCE_S)
            if up.returncode is None:
                up.kill()
    assert "all checks pass" in said["ponybot doctor"]
    assert "client_id=" in said["ponybot invite"] and "permissions=" in said["ponybot invite"]
    assert generate
    assert len(fake.attachment_bytes(message)) == 1
    assert (tmp_path / "config.toml").is_file()


def worker_online(folder: Path) -> bool:
    import redis

    from ponybot.workers import models_online

    url = running_embedded_url(folder / "data" / "redis")
    if url is None:
        return False
    client = redis.Redis.from_url(url)
    try:
        return bool(models_online(client))
    except redis.RedisError:
        return False
    finally:
        client.close()
