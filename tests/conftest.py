"""Shared fixtures: a real Redis (``PONYBOT_TEST_REDIS_URL`` or a private redis-server),
flushed around each test, and the ``tiny`` random-weight model, built once per run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from ponybot.redis_server import EmbeddedRedis
from ponybot.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
#: Tests never reach the hub (read by huggingface_hub at import, and inherited by the CLI's subprocesses).
os.environ["HF_HUB_OFFLINE"] = "1"
#: The default image tagger comes from the hub; tests that want one build a tiny one (tests/tagger.py).
NO_TAGGER = {"tagger": "none"}


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
                "PONYBOT_LOG__LEVEL": "WARNING", "PONYBOT_SAFETY__TAGGER": "none", **extra})
    if redis_url:
        env["PONYBOT_REDIS__URL"] = redis_url
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ponybot", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


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
