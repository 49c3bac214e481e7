"""Shared fixtures: a real Redis (``PONYBOT_TEST_REDIS_URL`` or a private redis-server),
flushed around each test, and the ``tiny`` random-weight model, built once per run.

Tests hold on a busy 2-core machine: they wait on states and events (:func:`wait_until`) with
deadlines far past what an idle machine needs, never on fixed sleeps, and every torch in the run
(this process and the workers it starts) uses one thread, so tests running side by side, or
beside another CPU-heavy process, do not starve each other.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from ponybot.redis_server import EmbeddedRedis
from ponybot.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
#: Tests never reach the hub (read by huggingface_hub at import, and inherited by the CLI's subprocesses).
os.environ["HF_HUB_OFFLINE"] = "1"
#: The default image tagger comes from the hub; tests that want one build a tiny one (tests/tagger.py).
NO_TAGGER = {"tagger": "none"}

#: One CPU thread per torch, here and in every process started from here (read when torch loads,
#: which is after this file: nothing imported above loads it).
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
for _name, _value in THREADS.items():
    os.environ.setdefault(_name, _value)

T = TypeVar("T")

#: Seconds a test waits for what takes a moment on an idle machine: a deadline, not a pace (every
#: wait returns as soon as its state holds), so generous enough for a fresh, busy 2-core machine.
PATIENCE_S = 300.0
#: The longest a warm stop may take after the last job: far below the 60 s of RQ's pub/sub read (the timer a
#: stop once waited on), far above a stop on a busy 2-core machine (a fraction of a second idle).
STOP_BOUND_S = 20.0


def wait_until(predicate: Callable[[], T], timeout: float = PATIENCE_S, what: str = "the awaited state") -> T:
    """``predicate()``'s first truthy result, polled until ``timeout``; TimeoutError naming ``what`` after it."""
    deadline = time.monotonic() + timeout
    while True:
        if result := predicate():
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} did not come within {timeout:g} s")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("PONYBOT_TEST_REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedRedis(tmp_path_factory.mktemp("redis"), persistent=False) as server:
        yield server.url


@pytest.fixture
def conn(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from worker.tiny import ensure_tiny_pipeline

    cache = tmp_path_factory.mktemp("models")
    ensure_tiny_pipeline(cache)
    return cache


def make_settings(redis_url: str | None, model_cache: Path, **sections: dict[str, Any]) -> Settings:
    base: dict[str, dict[str, Any]] = {
        "redis": {"url": redis_url},
        "model": {"source": "tiny", "cache_dir": model_cache},
        "defaults": {"size": "256x256", "steps": 4},
        "cli": {"no_worker_timeout_s": 2.0},
        "safety": dict(NO_TAGGER),
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return load_settings(None, **base)


@pytest.fixture
def settings(redis_url: str, model_cache: Path, conn: redis.Redis) -> Settings:
    return make_settings(redis_url, model_cache)


@pytest.fixture(scope="session")
def generator(model_cache: Path) -> Any:
    """The tiny model, loaded once per run (as a worker keeps it resident)."""
    from ponybot.settings import ModelSettings
    from worker.generate import Generator
    from worker.loading import load_model, resolve_device

    return Generator(load_model("tiny", ModelSettings(cache_dir=model_cache), resolve_device("cpu")))


@pytest.fixture(scope="session")
def classifier() -> Any:
    """The real open_nsfw classifier (offline, from its wheel); the tagger is left out (it comes from the hub)."""
    from ponybot.settings import SafetySettings
    from worker.safety import load_safety

    return load_safety(SafetySettings(**NO_TAGGER), Path("unused"), download=False, fail_fast=True)


@pytest.fixture
def runtime(settings: Settings, conn: redis.Redis, generator: Any, classifier: Any) -> Any:
    from worker.runtime import WorkerRuntime

    return WorkerRuntime(settings, conn, generator, "test-worker", classifier)


def cli_env(redis_url: str | None, model_cache: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PONYBOT_", "DISCORD_"))}
    env.update({"PONYBOT_MODEL__CACHE_DIR": str(model_cache), "PONYBOT_MODEL__SOURCE": "tiny",
                "PONYBOT_LOG__LEVEL": "WARNING", "PONYBOT_SAFETY__TAGGER": "none", **THREADS, **extra})
    if redis_url:
        env["PONYBOT_REDIS__URL"] = redis_url
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = PATIENCE_S
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ponybot", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
             ) -> Callable[[list[str], dict[str, str], Path], subprocess.CompletedProcess[str]]:
    """``ponybot ARGS`` in this process, as :func:`run_cli` runs it in a new one.

    For command lines that fail before any work: torch and the rest are already loaded here, where
    a new interpreter spends most of a minute importing them on a busy 2-core machine.
    """
    from ponybot.commands.cli import main

    def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
        with monkeypatch.context() as scope:
            for name in [name for name in os.environ if name.startswith(("PONYBOT_", "DISCORD_"))]:
                scope.delenv(name)
            for name, value in env.items():
                if name.startswith(("PONYBOT_", "DISCORD_")):
                    scope.setenv(name, value)
            scope.delenv("HF_HUB_OFFLINE", raising=False)  # what loading a checkpoint sets is undone after
            scope.chdir(cwd)
            code = main(args)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


@pytest.fixture
async def fake() -> Any:
    """The Discord on loopback; every request the bot sent must pass Discord's OpenAPI description."""
    from tests.discord_fake.server import FakeDiscord

    server = FakeDiscord()
    await server.start()
    yield server
    await server.stop()
    assert server.rejected == [], "requests Discord's OpenAPI description rejects"


def announce(conn: redis.Redis, models: list[str], name: str = "announced-worker", **fields: Any) -> None:
    """A worker's heartbeat record, as a worker that will run (in the test, later) writes it."""
    from ponybot.workers import WorkerRecord, publish_worker

    publish_worker(conn, WorkerRecord(name=name, models=models, **fields), heartbeat_s=600)


@pytest.fixture
def discord_settings(settings: Settings, fake: Any, conn: redis.Redis) -> Settings:
    """Settings for the bot against the fake Discord; the default model is announced as held by a worker
    (the tests run the real worker in-process after queueing, with ``drain``)."""
    from tests.bot_harness import bot_settings

    announce(conn, [settings.default_model])
    return bot_settings(settings, fake)


@pytest.fixture
def oauth_fake() -> Iterator[Any]:
    """Discord's OAuth2 endpoints on loopback (for the gallery's sign-in)."""
    from tests.discord_fake.oauth import OAuthFake

    fake = OAuthFake(client_id=424242, client_secret="fake-client-secret").start()
    yield fake
    fake.stop()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the PostgreSQL at 127.0.0.1:5432 (trust auth), dropped afterwards."""
    from tests.gallery_harness import postgres_database

    with postgres_database() as url:
        yield url
