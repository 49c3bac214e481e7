"""Every ``ponybot generate`` option on every path (the queue on plain Redis, through Sentinel, and --local),
with a default model not named pony-v4; and jobs that wait for a worker that is coming."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from PIL import Image

from ponybot import keys
from ponybot.parameters import parse_parameters
from ponybot.queue import generation_queue
from ponybot.settings import load_settings
from ponybot.workers import WorkerRecord, publish_worker
from tests.bot_harness import ThreadWorker
from tests.conftest import NO_TAGGER, THREADS, wait_until
from tests.test_failover import SentinelSet, sentinel_set
from worker.runtime import WorkerRuntime

MODELS = ("alpha", "beta")

#: (options, what each PNG's metadata says: per image index) -- the default model is alpha.
OPTION_ROWS = [
    (["--model", "beta", "--seed", "7", "--steps", "3", "--size", "320x256", "--speed", "fast"],
     [{"Model": "beta", "Seed": "7", "Steps": "3", "Size": "320x256", "Speed": "fast (DeepCache interval 3)"}]),
    (["--seed", "11", "--sampler", "euler_a", "--cfg", "5", "--clip-skip", "1", "--count", "2",
      "--negative", "blurry", "--no-quality"],
     [{"Model": "alpha", "Seed": "11", "Steps": "2", "Size": "256x256", "Sampler": "Euler a", "CFG scale": "5",
       "Clip skip": "1", "negative_prompt": "blurry", "prompt": "pony"},
      {"Model": "alpha", "Seed": "12"}]),
    # inpaint: a picture and its mask (written by the test into the working folder)
    (["--image", "in.png", "--mask", "mask.png", "--inpaint-area", "only_masked", "--inpaint-padding", "16",
      "--mask-blur", "2", "--strength", "0.9", "--seed", "3"],
     [{"Seed": "3", "Size": "320x256", "Inpaint area": "Only masked", "Masked area padding": "16", "Mask blur": "2",
       "Denoising strength": "0.9"}]),
]


def write_config(folder: Path, model_cache: Path, redis_lines: str) -> Path:
    """Two models, alpha (the default, first in the table) and beta, both the tiny one under its own name (what
    the PNG's ``Model`` says)."""
    config = folder / "config.toml"
    config.write_text(
        f"{redis_lines}\n[model]\ncache_dir = '{model_cache}'\n"
        "[models.alpha]\nsource = 'tiny'\nname = 'alpha'\n[models.beta]\nsource = 'tiny'\nname = 'beta'\n"
        "[defaults]\nsize = '256x256'\nsteps = 2\n[cli]\nno_worker_timeout_s = 30\n"
        f"[safety]\ntagger = '{NO_TAGGER['tagger']}'\n[log]\nlevel = 'WARNING'\n", encoding="utf-8")
    return config


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    with sentinel_set(tmp_path_factory.mktemp("sentinels")) as topology:
        yield topology


def worker_beside(conn: redis.Redis, settings: Any, classifier: Any) -> threading.Thread:
    """A worker holding alpha and beta that takes the job as soon as one is queued (in a thread)."""
    from worker.generate import Generator
    from worker.loading import load_model, resolve_device

    generators = {name: Generator(load_model(settings.models[name].source, settings.model, resolve_device("cpu"),
                                             entry=settings.models[name], key=name)) for name in MODELS}
    runtime = WorkerRuntime(settings, conn, generators, "holds-alpha-beta", classifier)
    publish_worker(conn, WorkerRecord(name="holds-alpha-beta", models=list(MODELS)), heartbeat_s=600)

    def serve() -> None:
        wait_until(lambda: any(generation_queue(conn, name).count for name in MODELS), what="the CLI's job")
        ThreadWorker(runtime).work(burst=True)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(("options", "expected"), OPTION_ROWS)
@pytest.mark.parametrize("path", ["redis", "sentinel", "local"])
def test_cli_options_on_every_path(path: str, options: list[str], expected: list[dict[str, str]], tmp_path: Path,
                                   model_cache: Path, redis_url: str, conn: redis.Redis, run_main: Any,
                                   classifier: Any, request: pytest.FixtureRequest) -> None:
    if path == "sentinel":
        topology: SentinelSet = request.getfixturevalue("sentinels")
        queue_conn = redis.Redis(port=topology.primary_port_now())
        queue_conn.flushdb()
        redis_lines = f"[redis]\nsentinels = {topology.addresses!r}\nmaster_name = 'ponybot'"
    else:
        queue_conn = conn
        redis_lines = f"[redis]\nurl = '{redis_url}'"
    config = write_config(tmp_path, model_cache, redis_lines)
    Image.new("RGB", (320, 256), (30, 90, 200)).save(tmp_path / "in.png")
    mask = Image.new("L", (320, 256), 0)
    mask.paste(255, (100, 80, 160, 140))
    mask.save(tmp_path / "mask.png")
    worker = None
    if path != "local":
        settings = load_settings(config)
        worker = worker_beside(queue_conn, settings, classifier)
    local = ["--local"] if path == "local" else []
    result = run_main(["--config", str(config), "generate", "pony", *options, *local], dict(THREADS), tmp_path)
    assert result.returncode == 0, result.stderr
    if worker is not None:
        worker.join(timeout=60)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(expected), result.stdout
    for line, fields in zip(lines, expected, strict=True):
        png, seed = line.split("\t")
        assert seed == f"seed={fields['Seed']}"
        with Image.open(tmp_path / png) as image:
            metadata = parse_parameters(image.text["parameters"])  # type: ignore[attr-defined]
        assert {key: metadata.get(key) for key in fields} == fields
    assert all(generation_queue(queue_conn, name).count == 0 for name in MODELS)


@pytest.mark.parametrize(("options", "message"), [
    (["--model", "gamma"], "model: there is no model 'gamma' here (models: alpha, beta)"),
    (["--model", "Not A Name"], "model: there is no model 'Not A Name' here (models: alpha, beta)"),
])
def test_cli_refuses_a_model_nobody_configured(options: list[str], message: str, tmp_path: Path,
                                               model_cache: Path, redis_url: str, conn: redis.Redis,
                                               run_main: Any) -> None:
    config = write_config(tmp_path, model_cache, f"[redis]\nurl = '{redis_url}'")
    publish_worker(conn, WorkerRecord(name="holds-alpha", models=["alpha"]), heartbeat_s=600)
    result = run_main(["--config", str(config), "generate", "pony", *options], dict(THREADS), tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not conn.keys("rq:queue:*")  # nothing queued, on any model's queue


@pytest.mark.parametrize(("held", "ago_s", "state"), [
    (True, 0, "online"),
    (False, None, "coming"),  # never seen: a fresh `ponybot up`, its worker still loading
    (False, 30, "coming"),  # a worker restarting
    (False, 599, "coming"),
    (False, 601, "gone"),
])
def test_when_a_model_last_had_a_worker(held: bool, ago_s: float | None, state: str, conn: redis.Redis) -> None:
    from ponybot.workers import model_workers

    if held:
        publish_worker(conn, WorkerRecord(name="w", models=["alpha"]), heartbeat_s=600)
    elif ago_s is not None:
        conn.hset(keys.MODELS_LAST_HELD, "alpha", time.time() - ago_s)
    found = model_workers(conn, "alpha", gone_refuse_s=600)
    assert found.state == state
    assert len(found.records) == (1 if held else 0)


def test_a_stopped_worker_leaves_when_it_last_held_its_models(conn: redis.Redis) -> None:
    from ponybot.workers import model_workers, remove_worker

    publish_worker(conn, WorkerRecord(name="w", models=["alpha", "beta"]), heartbeat_s=600)
    remove_worker(conn, "w")
    for name in ("alpha", "beta"):
        found = model_workers(conn, name, gone_refuse_s=600)
        assert found.state == "coming" and found.gone_s is not None and 0 <= found.gone_s < 60
