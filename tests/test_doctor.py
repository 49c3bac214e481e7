"""``ponybot doctor`` on a healthy set-up (the fake Discord, a Redis, the tiny model), then one problem at a
time: each named with its fix, exit 1, no traceback."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from ponybot.policy import PolicyRules
from ponybot.policy_store import PolicyStore
from tests.conftest import PATIENCE_S, cli_env
from tests.discord_fake.permissions import ATTACH_FILES
from tests.discord_fake.server import FakeDiscord

TOKEN = "MTIzNDU2Nzg5.good.token"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def break_token(fake: FakeDiscord, env: dict[str, str], args: list[str]) -> None:
    env["DISCORD_TOKEN"] = "MTIzNDU2Nzg5.revoked.token"


def stop_redis(fake: FakeDiscord, env: dict[str, str], args: list[str]) -> None:
    env["PONYBOT_REDIS__URL"] = f"redis://127.0.0.1:{closed_port()}/0"


def uncached_model(fake: FakeDiscord, env: dict[str, str], args: list[str]) -> None:
    env["PONYBOT_MODEL__SOURCE"] = "someone/not-in-the-cache"


def deny_attach_files(fake: FakeDiscord, env: dict[str, str], args: list[str]) -> None:
    fake.deny_bot(next(iter(fake.channels)), ATTACH_FILES)


def fill_disk(fake: FakeDiscord, env: dict[str, str], args: list[str]) -> None:
    args += ["--min-free-gb", "1e9"]


CASES: dict[str, tuple[Callable[..., None], set[str], str]] = {
    # what breaks, the checks that fail, a word of the fix
    "wrong token": (break_token, {"discord token"}, "Reset Token"),
    "redis down": (stop_redis, {"redis", "discord channels"}, "start Redis"),
    "model missing": (uncached_model, {"model pony-v4"}, "local folder or .safetensors"),
    "no attach files": (deny_attach_files, {"channel #general"}, "allow Attach Files"),
    "full disk": (fill_disk, {"disk model.cache_dir", "disk cli.out_dir", "disk redis.embedded_dir"},
                  "free space there"),
}


@pytest.fixture
def threaded_fake() -> Iterator[FakeDiscord]:
    """The fake Discord on an event loop of its own thread: the command runs in the main thread (signals)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-discord", daemon=True)
    thread.start()
    fake = FakeDiscord()
    asyncio.run_coroutine_threadsafe(fake.start(), loop).result(PATIENCE_S)
    yield fake
    asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(PATIENCE_S)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(PATIENCE_S)
    assert fake.rejected == []


@pytest.fixture
def doctor(threaded_fake: FakeDiscord, redis_url: str, model_cache: Path, conn: redis.Redis, tmp_path: Path,
           run_main: Any) -> Callable[..., Any]:
    fake = threaded_fake
    fake.token = TOKEN
    PolicyStore(conn).set_channel(fake.guild_id, next(iter(fake.channels)), PolicyRules(), by=1)
    env = cli_env(redis_url, model_cache, DISCORD_TOKEN=TOKEN, PONYBOT_DISCORD__API_BASE=fake.api_base)

    def run(*args: str, change: Callable[..., None] | None = None) -> Any:
        arguments = ["doctor", *args]
        if change:
            change(fake, env, arguments)
        return run_main(arguments, env, tmp_path)

    return run


def test_healthy_setup_passes(doctor: Callable[..., Any]) -> None:
    result = doctor()
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "all checks pass"
    for name in ("config", "secrets", "redis", "model pony-v4", "torch", "disk model.cache_dir", "gallery",
                 "discord token", "discord servers", "channel #general"):
        assert any(line.startswith(f"[ok] {name}: ") for line in lines), name
    assert not any(line.startswith("[!!]") for line in lines)


@pytest.mark.parametrize("case", list(CASES))
def test_each_problem_is_named_with_its_fix(case: str, doctor: Callable[..., Any]) -> None:
    change, failing, fix = CASES[case]
    result = doctor("--json", change=change)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False
    problems = {check["name"]: check for check in report["checks"] if not check["ok"]}
    assert set(problems) == failing
    assert any(fix in (check["fix"] or "") for check in problems.values()), problems
    text = doctor(*(["--min-free-gb", "1e9"] if case == "full disk" else []))  # the change is still in place
    assert text.returncode == 1 and any(line.startswith("[!!]") and " -> " in line
                                        for line in text.stdout.splitlines())


@pytest.mark.parametrize("database", ["sqlite", "postgresql", "postgresql-down"])
def test_gallery_database_check(database: str, request: pytest.FixtureRequest, tmp_path: Path,
                                settings: Any) -> None:
    from sqlalchemy import create_engine

    from ponybot.commands.doctor import Options
    from ponybot.commands.doctor_checks import gallery_database

    if database == "sqlite":
        url = f"sqlite:///{tmp_path}/gallery.db"
        create_engine(url).connect().close()  # the file ponybot gallery would have made
    elif database == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"postgresql+psycopg://ponybot@127.0.0.1:{closed_port()}/gallery"
    gallery = settings.gallery.model_copy(update={"enabled": True, "database_url": url})
    [found] = gallery_database(settings.model_copy(update={"gallery": gallery}), Options())
    assert found.ok is (database != "postgresql-down"), found
    if not found.ok:
        assert "does not answer" in found.detail and found.fix


def test_redis_check_through_sentinels(tmp_path: Path, settings: Any) -> None:
    from ponybot.commands.doctor import Options
    from ponybot.commands.doctor_checks import redis_server
    from tests.test_failover import eventually, sentinel_set

    with sentinel_set(tmp_path) as topology:
        section = settings.redis.model_copy(update={"sentinels": topology.addresses, "url": None})
        through = settings.model_copy(update={"redis": section})

        def answered() -> Any:
            [found] = redis_server(through, Options())
            return found if found.ok and "1 replica(s)" in found.detail else None

        found = eventually(answered)
    assert "sentinel(s)" in found.detail and "append-only file on" in found.detail
    [gone] = redis_server(through, Options())  # the sentinels stopped with the set
    assert not gone.ok and "does not answer" in gone.detail and gone.fix


@pytest.mark.parametrize(("required", "ok"), [(None, True), (["nsfwjs"], True), (["nsfwjs", "tagger"], False)])
def test_a_missing_tagger_is_a_problem_only_when_required(required: list[str] | None, ok: bool, tmp_path: Path,
                                                          settings: Any) -> None:
    """Without the tagger, SFW channels get what the bundled checks pass: the doctor says so, and names it a
    problem only when ``safety.required`` makes every SFW image wait for the tagger."""
    from ponybot.commands.doctor import Options
    from ponybot.commands.doctor_checks import models

    safety = settings.safety.model_copy(update={"tagger": "SmilingWolf/wd-vit-tagger-v3", "required": required})
    model = settings.model.model_copy(update={"cache_dir": tmp_path / "empty-cache"})
    found = models(settings.model_copy(update={"safety": safety, "model": model}), Options())
    [tagger] = [line for line in found if line.name == "tagger"]
    assert tagger.ok is ok, tagger
    assert "not in the cache" in tagger.detail
    assert ("withhold every image" in tagger.detail) is not ok and ("nsfwjs" in tagger.detail) is ok
