"""Bad input anywhere: one line on stderr naming the setting, a non-zero exit, never a traceback.

One table, one row per kind of mistake; each runs the real ``ponybot`` command in a subprocess.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import cli_env, run_cli


@dataclass(frozen=True)
class Case:
    args: list[str]
    code: int
    names: str  #: what the one line must say (the setting, mostly)
    env: dict[str, str] = field(default_factory=dict)
    setup: Callable[[Path], None] | None = None
    hidden: str | None = None  #: must not be echoed


#: ``ponybot gallery`` with a Redis URL nothing answers on (it is not reached before the database is opened)
GALLERY = {"PONYBOT_GALLERY__ENABLED": "true", "PONYBOT_REDIS__URL": "redis://127.0.0.1:1/0"}


def write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes(data)


def symlink_loop(folder: Path) -> None:
    (folder / "loop.toml").symlink_to(folder / "loop.toml")


POLICY = ["policy", "check", "pony"]
CASES = {
    "config not UTF-8": Case(["--config", "bad.toml", *POLICY], 2, "bad.toml is not UTF-8",
                             setup=write("bad.toml", b"[log]\nlevel = '\xff\xfe'\n")),
    "config is a folder": Case(["--config", ".", *POLICY], 2, "config file . is a folder"),
    "config unreadable": Case(["--config", "loop.toml", *POLICY], 2, "loop.toml cannot be read", setup=symlink_loop),
    "config missing": Case(["--config", "nope.toml", *POLICY], 2, "nope.toml does not exist"),
    "section of the wrong type": Case(["--config", "c.toml", *POLICY], 2, "redis: Input should be a valid dictionary",
                                      setup=write("c.toml", b"redis = 5\n")),
    "section of the wrong type, token from env": Case(
        ["--config", "c.toml", *POLICY], 2, "discord: Input should be a valid dictionary",
        env={"DISCORD_TOKEN": "x"}, setup=write("c.toml", b"discord = 5\n")),
    "list from env, bad item": Case(POLICY, 2, "discord.sync_guilds.1", env={"PONYBOT_DISCORD__SYNC_GUILDS": "1,x"}),
    "list from env, bad JSON section": Case(POLICY, 2, "not valid JSON", env={"PONYBOT_DISCORD": "{oops"}),
    "redis url without scheme": Case(["status"], 2, "redis.url: must look like redis://",
                                     env={"PONYBOT_REDIS__URL": "localhost:6379"}),
    "redis url port out of range": Case(["status"], 2, "redis.url: its port must be a number from 1 to 65535",
                                        env={"PONYBOT_REDIS__URL": "redis://:hunter2@127.0.0.1:99999/0"},
                                        hidden="hunter2"),
    "redis url db not a number": Case(["status"], 2, "redis.url: its database must be a number",
                                      env={"PONYBOT_REDIS__URL": "redis://127.0.0.1:6390/zero"}),
    "unknown variable": Case(POLICY, 0, "PONYBOT_REDIS_URL is not a ponybot setting and is ignored (did you mean "
                             "PONYBOT_REDIS__URL?)", env={"PONYBOT_REDIS_URL": "redis://127.0.0.1:6390/0"}),
    "unknown key in a section": Case(POLICY, 2, "limits.max_stepz: unknown setting (did you mean limits.max_steps?)",
                                     env={"PONYBOT_LIMITS__MAX_STEPZ": "5"}),
    "device torch does not know": Case(["worker", "--device", "gpu"], 2, "worker.device (--device): must be auto"),
    "device malformed": Case(["worker", "--device", "cuda:x"], 2, "worker.device (--device): must be auto"),
    "device this machine cannot run": Case(["worker", "--device", "cuda:99"], 2, "worker.device: 'cuda:99'"),
    "metrics port out of range": Case(["worker", "--metrics-port", "70000"], 2,
                                      "metrics.worker_port (--metrics-port): must be from 0 (off) to 65535",
                                      env={"PONYBOT_WORKER__DEVICE": "cpu"}),
    "metrics port out of range, setting": Case(["worker"], 2, "metrics.worker_port: Input should be less than",
                                               env={"PONYBOT_METRICS__WORKER_PORT": "70000"}),
    "metrics port busy": Case(["worker", "--metrics-port", "{busy}"], 2,
                              "metrics.worker_port (--metrics-port): port {busy} is not free",
                              env={"PONYBOT_WORKER__DEVICE": "cpu"}),
    "out is a file": Case(["generate", "pony", "--out", "taken.txt"], 2, "cli.out_dir (--out): taken.txt is a file",
                          setup=write("taken.txt", b"x")),
    "out under a file": Case(["generate", "pony", "--out", "taken.txt/images"], 2,
                             "cli.out_dir (--out): cannot create taken.txt/images", setup=write("taken.txt", b"x")),
    "control character in the prompt": Case(["generate", "pony\x1b[2J"], 2,
                                            "prompt: contains the control character U+001B"),
    "a 10,000-character prompt": Case(["generate", "a" * 10_000], 2, "prompt: String should have at most 1000"),
    "negative workers": Case(["up", "--workers", "-1"], 2, "--workers: must be 0 or more"),
    "gallery port busy": Case(["gallery"], 2, "gallery.port: port {busy} is not free on 127.0.0.1",
                              env={**GALLERY, "PONYBOT_GALLERY__PORT": "{busy}"}),
    "gallery database url malformed": Case(["gallery"], 2, "gallery.database_url: not a database URL",
                                           env={**GALLERY, "PONYBOT_GALLERY__DATABASE_URL": "not a url"}),
    "gallery database of no known kind": Case(["gallery"], 2, "gallery.database_url: nosuch://db cannot be used",
                                              env={**GALLERY, "PONYBOT_GALLERY__DATABASE_URL": "nosuch://db"}),
    "gallery store folder impossible": Case(["gallery"], 2, "gallery.store_dir: cannot create taken.txt/images",
                                            env={**GALLERY, "PONYBOT_GALLERY__STORE_DIR": "taken.txt/images"},
                                            setup=write("taken.txt", b"x")),
    "gallery s3 without a bucket": Case(["gallery"], 2, "gallery.store is s3, so gallery.s3_bucket must be set",
                                        env={**GALLERY, "PONYBOT_GALLERY__STORE": "s3"}),
    "gallery database unreachable": Case(["gallery"], 1, "gallery.database_url: cannot open "
                                         "postgresql+psycopg://ponybot:***@127.0.0.1:1/gallery",
                                         env={**GALLERY, "PONYBOT_GALLERY__DATABASE_URL":
                                              "postgresql+psycopg://ponybot:hunter2@127.0.0.1:1/gallery"},
                                         hidden="hunter2"),
}


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_naming_the_setting(name: str, tmp_path: Path, busy_port: int) -> None:
    case = CASES[name]
    if case.setup:
        case.setup(tmp_path)
    args = [arg.replace("{busy}", str(busy_port)) for arg in case.args]
    env = cli_env(None, tmp_path, OMP_NUM_THREADS="1",
                  **{key: value.replace("{busy}", str(busy_port)) for key, value in case.env.items()})
    result = run_cli(args, env, tmp_path)
    assert result.returncode == case.code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert case.names.replace("{busy}", str(busy_port)) in lines[0]
    assert lines[0].startswith("ponybot: ")
    assert len(lines[0]) < 600  # never the whole input echoed back
    if case.hidden:
        assert case.hidden not in result.stderr


def test_lists_from_the_environment_as_commas_or_json(tmp_path: Path) -> None:
    for value in ("dragon, castle", '["dragon", "castle"]'):
        env = cli_env(None, tmp_path, PONYBOT_POLICY__SFW_FORBIDDEN_TERMS=value)
        refused = run_cli(["policy", "check", "a castle at night"], env, tmp_path)
        assert refused.returncode == 1, refused.stderr
        assert '"allowed": false' in refused.stdout and "castle" in refused.stdout
        # the list replaced the default list (which refuses "grimdark"); the built-in term lists still apply
        allowed = run_cli(["policy", "check", "a grimdark pony"], env, tmp_path)
        assert allowed.returncode == 0, allowed.stderr


def test_unreadable_config_when_permissions_apply(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file; the symlink-loop row covers unreadable files")
    config = tmp_path / "secret.toml"
    config.write_text("[log]\nlevel = 'INFO'\n")
    config.chmod(0)
    result = run_cli(["--config", str(config), *POLICY], cli_env(None, tmp_path), tmp_path)
    assert result.returncode == 2 and "cannot be read" in result.stderr and "Traceback" not in result.stderr
