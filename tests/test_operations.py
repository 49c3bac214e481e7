"""Operators: ``ponybot up`` and its restart, status, metrics, the compose file against the settings."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import redis
import yaml

from ponybot import keys
from ponybot.metrics import serve
from ponybot.policy import Mode, PolicyRules
from ponybot.policy_store import PolicyStore
from ponybot.queue import enqueue
from ponybot.redis_server import free_port
from ponybot.schemas import Job, JobEvent, build_request
from ponybot.settings import Settings, load_settings
from tests.bot_harness import drain, running_bot
from tests.conftest import PATIENCE_S, ROOT, cli_env, run_cli, wait_until
from tests.discord_fake.server import FakeDiscord
from worker.runtime import WorkerRuntime


def start_up(cwd: Path, model_cache: Path, *args: str) -> subprocess.Popen[str]:
    env = cli_env(None, model_cache, PONYBOT_WORKER__DEVICE="cpu", PONYBOT_LOG__LEVEL="INFO",
                  PONYBOT_WORKER__MAINTENANCE_S="1")
    return subprocess.Popen([sys.executable, "-m", "ponybot", "up", *args], env=env, cwd=cwd,
                            stderr=subprocess.PIPE, text=True)


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=PATIENCE_S)
    assert process.returncode == 0, err
    return err


def test_up_generates_and_keeps_queued_state(tmp_path: Path, model_cache: Path, settings: Settings) -> None:
    marker = tmp_path / "data" / "redis" / "redis.url"
    first = start_up(tmp_path, model_cache, "--workers", "0")
    try:
        url = wait_until(lambda: marker.is_file() and marker.read_text(), what="up's embedded Redis")
        conn = redis.Redis.from_url(url)
        job = Job.create(build_request(settings.limits, prompt="waiting", steps=3, width=256, height=256))
        enqueue(conn, job, max_queue=10, result_ttl_s=600)
        PolicyStore(conn).set_guild(7, PolicyRules(mode=Mode.NSFW), by=1)
    finally:
        log = stop(first)
    assert "DISCORD_TOKEN" in log and "ponybot generate" in log  # what to set, and what to try meanwhile
    assert not marker.exists()

    second = start_up(tmp_path, model_cache, "--workers", "1")
    try:
        url = wait_until(lambda: marker.is_file() and marker.read_text(), what="up's embedded Redis")
        conn = redis.Redis.from_url(url)
        wait_until(lambda: conn.xlen(keys.EVENTS_STREAM), what="the job queued before the restart")
        [event] = [JobEvent.model_validate_json(f[b"data"]) for _id, f in conn.xrange(keys.EVENTS_STREAM)]
        assert event.job.id == job.id and event.kind == "done"
        assert PolicyStore(conn).guild_rules(7).mode is Mode.NSFW
        generated = run_cli(["generate", "pinkie pie", "--seed", "3", "--out", "imgs"],
                            cli_env(None, model_cache, PONYBOT_CLI__NO_WORKER_TIMEOUT_S=str(PATIENCE_S)), tmp_path)
        assert generated.returncode == 0, generated.stderr
        assert "seed=3" in generated.stdout
        status = run_cli(["status"], cli_env(None, model_cache), tmp_path)
        assert "Workers online: 1" in status.stdout and "2 done" in status.stdout
    finally:
        stop(second)


def test_metrics_endpoint(conn: redis.Redis, settings: Settings, runtime: WorkerRuntime) -> None:
    port = free_port()
    measured = WorkerRuntime(settings, conn, runtime.generator, "metrics", runtime.classifier, serve(port, conn))
    for _ in range(2):
        job = Job.create(build_request(settings.limits, prompt="pony", steps=2, width=256, height=256, count=2))
        enqueue(conn, job, max_queue=10, result_ttl_s=60)
    from worker.runner import GenerationWorker

    GenerationWorker(measured).work(burst=True)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=PATIENCE_S) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    assert 'ponybot_generation_seconds_count{model="pony-v4"} 2.0' in text
    assert 'ponybot_images_total{model="pony-v4"} 4.0' in text
    assert 'ponybot_queue_depth{model="pony-v4"} 0.0' in text
    guide = (ROOT / "docs" / "operators" / "metrics.md").read_text()
    for name in set(re.findall(r"^(ponybot_[a-z_]+?)(?:_total|_count|_sum|_bucket|_created)?[ {]", text, re.M)):
        assert name in guide, f"{name} is not documented in docs/operators/metrics.md"


async def test_status_command(fake: FakeDiscord, discord_settings: Settings, redis_url: str, conn: redis.Redis,
                              runtime: WorkerRuntime) -> None:
    job = Job.create(build_request(discord_settings.limits, prompt="pony", steps=2, width=256, height=256))
    enqueue(conn, job, max_queue=10, result_ttl_s=60)
    await drain(runtime)
    async with running_bot(discord_settings, redis_url):
        interaction = await fake.slash("status")
        message = await fake.wait_for(lambda: fake.original(interaction))
        german = await fake.slash("status", locale="de")
        in_german = await fake.wait_for(lambda: fake.original(german))
    assert message["flags"] & 64
    text = message["embeds"][0]["description"]
    assert "Workers online: 0" in text and "1 done" in text  # the burst worker is gone again
    german_text = in_german["embeds"][0]["description"]
    assert "Worker online: 0" in german_text and "1 fertig" in german_text and "Mittlere Erzeugungszeit" in german_text
    assert "Warteschlange: 0 wartend" in german_text and "done" not in german_text


def test_compose_and_settings_agree() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env_names: set[str] = set()
    for service in compose["services"].values():
        environment = service.get("environment", {})
        env_names |= set(environment if isinstance(environment, dict) else
                         [item.split("=", 1)[0] for item in environment])
    example_env = (ROOT / "docker" / "ponybot.env.example").read_text()
    env_names |= {line.split("=", 1)[0] for line in example_env.splitlines() if "=" in line and
                  not line.startswith("#")}
    settings = Settings().model_dump()
    checked = 0
    for name in env_names:
        if name == "DISCORD_TOKEN":
            continue
        assert name.startswith("PONYBOT_"), name
        section, _, key = name.removeprefix("PONYBOT_").lower().partition("__")
        assert section in settings and key in settings[section], f"{name} is no setting"
        checked += 1
    assert checked >= 3
    assert set(compose["services"]) >= {"redis", "bot", "worker"}
    assert "--appendonly" in " ".join(compose["services"]["redis"]["command"])
    assert compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    # the optional failover profile: a replica of redis and three sentinels watching it under redis.master_name
    sentinels = [service for name, service in compose["services"].items() if name.startswith("sentinel-")]
    assert len(sentinels) == 3 and all(service["profiles"] == ["sentinel"] for service in sentinels)
    assert f"sentinel monitor {Settings().redis.master_name} redis 6379 2" in " ".join(sentinels[0]["command"])
    assert "--replicaof" in compose["services"]["redis-replica"]["command"]


def dockerfile_env(path: Path) -> dict[str, str]:
    """The ENV settings of a Dockerfile (``ENV A=1 B=2``, continued lines included)."""
    text = path.read_text().replace("\\\n", " ")
    pairs = [item for line in text.splitlines() if line.startswith("ENV ") for item in line.split()[1:]]
    return dict(item.split("=", 1) for item in pairs)


def test_compose_gallery_profile_runs_the_gallery(monkeypatch: pytest.MonkeyPatch) -> None:
    """The optional gallery service: its image installs the gallery extra and runs it, its settings load, it
    listens on every interface on the published port, and its database and images are on its volume."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    gallery = compose["services"]["gallery"]
    assert gallery["profiles"] == ["gallery"]
    dockerfile = ROOT / gallery["build"]["dockerfile"]
    text = dockerfile.read_text()
    assert '--no-build-isolation ".[gallery]"' in text and 'CMD ["ponybot", "gallery"]' in text
    image_env = dockerfile_env(dockerfile)
    for name, value in {**image_env, **gallery["environment"]}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("PONYBOT_CONFIG", raising=False)
    settings = load_settings()
    section = settings.gallery
    assert section.enabled and section.host == "0.0.0.0"
    assert gallery["ports"] == [f"{section.port}:{section.port}"] and f"EXPOSE {section.port}" in text
    assert f"127.0.0.1:{section.port}/healthz" in text
    [volume] = gallery["volumes"]
    name, mount = volume.split(":")
    assert name in compose["volumes"]
    assert section.database_url == f"sqlite:///{mount}/gallery.db" and section.store_dir.is_relative_to(mount)
    # the image's own defaults agree with compose's (a plain `docker run` behaves the same)
    assert {k: v for k, v in image_env.items() if k.startswith("PONYBOT_GALLERY__")
            and k in gallery["environment"]} == {k: str(v) for k, v in gallery["environment"].items()
                                                   if k.startswith("PONYBOT_GALLERY__")}
