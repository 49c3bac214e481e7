"""Several models: settings, one queue per model, workers that say what they hold, routing, refusal."""

from __future__ import annotations

import asyncio
import io
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from PIL import Image

from bot.features.generate import model_choices
from ponybot import keys
from ponybot.commands.up import spread_models
from ponybot.errors import ConfigError, NoWorkerError
from ponybot.queue import enqueue, generation_queue, require_worker
from ponybot.schemas import Job, JobEvent, build_request
from ponybot.settings import Settings, load_settings
from ponybot.workers import WorkerRecord, online_workers, publish_worker
from tests.bot_harness import ThreadWorker, bot_settings, ephemeral_reply, running_bot
from tests.conftest import announce
from tests.discord_fake.server import FakeDiscord
from worker.announce import Announcer
from worker.runtime import WorkerRuntime


@pytest.fixture(scope="session")
def second_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny model: the same shape, other weights (another seed)."""
    from worker.tiny import build_tiny_pipeline

    folder = tmp_path_factory.mktemp("pony-v3")
    build_tiny_pipeline(folder, seed=1)
    return folder


def two_model_settings(redis_url: str, model_cache: Path, second_model: Path, **sections: dict[str, Any]) -> Settings:
    return load_settings(None, redis={"url": redis_url}, model={"cache_dir": model_cache},
                         models={"pony-v4": {"source": "tiny", "description": "the first tiny model"},
                                 "pony-v3": {"source": str(second_model), "description": "the second tiny model"}},
                         defaults={"size": "256x256", "steps": 3}, **{"worker": {"heartbeat_s": 1}, **sections})


def test_settings_single_model_style_and_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [key for key in os.environ if key.startswith("PONYBOT_")]:
        monkeypatch.delenv(key)
    assert list(Settings().models) == ["pony-v4"] and Settings().default_model == "pony-v4"
    legacy = load_settings(None, model={"source": "tiny", "name": "mine"})
    assert legacy.default_model == "pony-v4" and legacy.models["pony-v4"].source == "tiny"
    assert legacy.models["pony-v4"].name == "mine" and legacy.models["pony-v4"].quality_tag == "derpibooru_p_95"
    # a [models.pony-v4] table (the README's example) keeps the model card's conventions it does not set
    own = load_settings(None, models={"pony-v4": {"source": "/m/v4.safetensors"}, "other": {"source": "x/y"}})
    assert own.models["pony-v4"].quality_tag == "derpibooru_p_95" and own.models["pony-v4"].safe_tag
    assert own.models["pony-v4"].source == "/m/v4.safetensors" and own.models["other"].quality_tag == ""
    table = tmp_path / "models.toml"
    table.write_text('[models.furry]\nsource = "x/furry"\nsafe_tag = false\n[models.pony-v3]\nsource = "x/v3"\n')
    settings = load_settings(table)
    assert settings.default_model == "furry" and settings.model_entry("pony-v3").source == "x/v3"
    both = tmp_path / "both.toml"
    both.write_text('[model]\nsource = "tiny"\n[models.pony-v3]\nsource = "x/v3"\n')
    with pytest.raises(ConfigError, match=r"model.source .*single-model style.* \[models.NAME\]"):
        load_settings(both)
    missing = tmp_path / "missing.toml"
    missing.write_text('[model]\ndefault = "pony-v9"\n')
    with pytest.raises(ConfigError, match=r"model.default \(pony-v9\) is not one of"):
        load_settings(missing)
    with pytest.raises(ConfigError, match="model name 'Pony V3'"):
        load_settings(None, models={"Pony V3": {"source": "x/y"}})
    with pytest.raises(ConfigError, match="model 'nope' is not configured"):
        settings.model_entry("nope")


def test_up_spreads_models_over_gpus() -> None:
    assert spread_models(["a"], 2) == [["a"], ["a"]]
    assert spread_models(["a", "b"], 2) == [["a"], ["b"]]
    assert spread_models(["a", "b", "c"], 2) == [["a", "c"], ["b"]]
    assert spread_models(["a", "b"], 3) == [["a"], ["b"], ["a"]]


def test_queue_names_keep_the_default_models() -> None:
    assert keys.generate_queue("pony-v4") == "ponybot-generate:pony-v4"
    assert keys.generate_queue("pony-v3") == "ponybot-generate:pony-v3"


def run_worker_once(runtime: WorkerRuntime) -> None:
    """A worker as ``ponybot worker`` runs it (its record announced), until its queues are empty."""
    with Announcer(runtime):
        ThreadWorker(runtime).work(burst=True)


def test_two_models_two_workers(redis_url: str, model_cache: Path, second_model: Path, conn: redis.Redis,
                                classifier: Any) -> None:
    from worker.generate import Generator
    from worker.loading import load_model, resolve_device

    settings = two_model_settings(redis_url, model_cache, second_model)
    cpu = resolve_device("cpu")
    generators = {name: Generator(load_model(entry.source, settings.model, cpu, entry=entry, key=name))
                  for name, entry in settings.models.items()}
    runtimes = {name: WorkerRuntime(settings, conn, {name: generator}, f"holds-{name}", classifier)
                for name, generator in generators.items()}
    with pytest.raises(NoWorkerError, match="pony-v3"):
        require_worker(conn, "pony-v3")  # nobody holds it yet: a job would wait forever

    jobs = {}
    for name in ("pony-v4", "pony-v3"):
        request = build_request(settings.limits, prompt="pinkie pie", steps=3, width=256, height=256, seed=7,
                                model=name)
        jobs[name] = Job.create(request)
        enqueue(conn, jobs[name], max_queue=10, result_ttl_s=120)
    assert generation_queue(conn, "pony-v3").count == 1 and generation_queue(conn, "pony-v4").count == 1

    run_worker_once(runtimes["pony-v4"])  # takes only its own model's job
    assert generation_queue(conn, "pony-v3").count == 1 and generation_queue(conn, "pony-v4").count == 0
    run_worker_once(runtimes["pony-v3"])
    assert online_workers(conn) == []  # each removed its record when it stopped

    events = {event.job.id: event for event in (JobEvent.model_validate_json(fields[b"data"])
                                                for _id, fields in conn.xrange(keys.EVENTS_STREAM))}
    pixels = {}
    for name, job in jobs.items():
        event = events[job.id]
        assert event.kind == "done" and event.worker == f"holds-{name}"
        drawn = np.asarray(Image.open(io.BytesIO(conn.get(event.images[0].key) or b"")))
        alone = generators[name].generate(job.request, seed=7, prompt=event.prompt,
                                          negative_prompt=event.negative_prompt).images[0]
        assert np.array_equal(drawn, np.asarray(alone)), name  # that model's pixels
        pixels[name] = drawn
    assert not np.array_equal(pixels["pony-v4"], pixels["pony-v3"])


def test_model_leaves_autocomplete_when_its_worker_stops(redis_url: str, model_cache: Path, second_model: Path,
                                                          conn: redis.Redis) -> None:
    settings = two_model_settings(redis_url, model_cache, second_model)
    publish_worker(conn, WorkerRecord(name="long-lived", models=["pony-v4"]), heartbeat_s=600)
    publish_worker(conn, WorkerRecord(name="killed", models=["pony-v3"]), heartbeat_s=1)  # then never renewed
    offered = [choice.value for choice in model_choices(settings, online_workers(conn), "")]
    assert offered == ["pony-v4", "pony-v3"]
    assert model_choices(settings, online_workers(conn), "second")[0].name == "pony-v3: the second tiny model"
    assert 0 < int(conn.ttl(keys.worker_record("killed"))) <= 3  # three heartbeats
    deadline = time.monotonic() + 60
    while "pony-v3" in [c.value for c in model_choices(settings, online_workers(conn), "")]:
        assert time.monotonic() < deadline, "pony-v3 still offered long after its worker's last heartbeat"
        time.sleep(0.2)
    assert [choice.value for choice in model_choices(settings, online_workers(conn), "")] == ["pony-v4"]


def test_running_worker_renews_its_record(redis_url: str, model_cache: Path, second_model: Path,
                                          conn: redis.Redis, generator: Any) -> None:
    settings = two_model_settings(redis_url, model_cache, second_model)
    runtime = WorkerRuntime(settings, conn, {"pony-v4": generator}, "renewing")
    with Announcer(runtime):
        first = conn.get(keys.worker_record("renewing"))
        deadline = time.monotonic() + 60
        while conn.get(keys.worker_record("renewing")) == first:  # seen_at changes with each heartbeat
            assert time.monotonic() < deadline
            time.sleep(0.2)
        record = WorkerRecord.model_validate_json(conn.get(keys.worker_record("renewing")) or b"")
        assert record.models == ["pony-v4"] and record.descriptions == {"pony-v4": "the first tiny model"}
    assert conn.get(keys.worker_record("renewing")) is None


async def test_generate_names_the_model_nobody_holds(fake: FakeDiscord, redis_url: str, model_cache: Path,
                                                     second_model: Path, conn: redis.Redis) -> None:
    settings = bot_settings(two_model_settings(redis_url, model_cache, second_model), fake)
    announce(conn, ["pony-v4"], descriptions={"pony-v4": "the first tiny model"})
    # pony-v3's last worker left an hour ago (over limits.worker_gone_refuse_s): its job would wait for nobody
    conn.hset(keys.MODELS_LAST_HELD, "pony-v3", time.time() - 3600)
    async with running_bot(settings, redis_url):
        typed = await fake.autocomplete("generate", {"prompt": "pony", "model": "pony"}, "model")
        await fake.wait_for(lambda: typed.choices is not None)
        refused = await fake.slash("generate", {"prompt": "pony", "model": "pony-v3"})
        reply = await fake.wait_for(lambda: ephemeral_reply(fake, refused))
        unknown = await fake.slash("generate", {"prompt": "pony", "model": "pony-v9"})
        unknown_reply = await fake.wait_for(lambda: ephemeral_reply(fake, unknown))
        held = await fake.slash("generate", {"prompt": "pony", "model": "pony-v4"})
        await fake.wait_for(lambda: "Queued" in (fake.original(held) or {}).get("content", ""))
    assert typed.choices == [{"name": "pony-v4: the first tiny model", "value": "pony-v4"}]
    assert "pony-v3" in reply and "no worker" in reply
    assert "pony-v9" in unknown_reply
    assert generation_queue(conn, "pony-v3").count == 0 and generation_queue(conn, "pony-v4").count == 1
    queued = Job.model_validate_json(conn.get(keys.job_record(generation_queue(conn).job_ids[0])) or b"")
    assert queued.request.model == "pony-v4"


async def test_on_demand_queues_for_a_worker_yet_to_start(fake: FakeDiscord, redis_url: str, model_cache: Path,
                                                          second_model: Path, conn: redis.Redis,
                                                          classifier: Any) -> None:
    """Scaled to zero (worker.on_demand): nobody online, the job is queued and says a worker is starting; the
    worker that starts for it (KEDA's, here a thread) draws it and the member gets the picture."""
    from worker.generate import Generator
    from worker.loading import load_model, resolve_device

    settings = bot_settings(two_model_settings(redis_url, model_cache, second_model, worker={"on_demand": True,
                                                                                              "heartbeat_s": 1}),
                            fake)
    async with running_bot(settings, redis_url):
        typed = await fake.autocomplete("generate", {"prompt": "pony", "model": "pony"}, "model")
        await fake.wait_for(lambda: typed.choices is not None)
        queued = await fake.slash("generate", {"prompt": "pony", "model": "pony-v3", "seed": 3})
        waiting = await fake.wait_for(lambda: (fake.original(queued) or {}).get("content"))
        assert generation_queue(conn, "pony-v3").count == 1  # waiting for a worker: what KEDA counts
        entry = settings.models["pony-v3"]
        generator = Generator(load_model(entry.source, settings.model, resolve_device("cpu"), entry=entry,
                                         key="pony-v3"))
        runtime = WorkerRuntime(settings, conn, {"pony-v3": generator}, "started-on-demand", classifier)
        await asyncio.to_thread(run_worker_once, runtime)
        posted = await fake.wait_for(lambda: [m for m in fake.messages.values() if m["attachments"]])
    assert [choice["value"] for choice in typed.choices or []] == ["pony-v4", "pony-v3"]  # every configured model
    assert "No worker is running yet: one is starting" in waiting and "position 1" in waiting
    assert len(posted) == 1 and "pony" in posted[0]["content"]
    assert generation_queue(conn, "pony-v3").count == 0


def test_status_and_metrics_per_model(conn: redis.Redis, redis_url: str, model_cache: Path,
                                      second_model: Path) -> None:
    from prometheus_client import generate_latest

    from ponybot.metrics import serve
    from ponybot.status import collect_status, describe_status

    settings = two_model_settings(redis_url, model_cache, second_model)
    announce(conn, ["pony-v3"])
    for _ in range(2):
        job = Job.create(build_request(settings.limits, prompt="pony", model="pony-v3"))
        enqueue(conn, job, max_queue=10, result_ttl_s=60)
    conn.lpush(keys.recent_durations("pony-v3"), "4.0")
    status = collect_status(conn, list(settings.models))
    by_name = {item.name: item for item in status.models}
    assert by_name["pony-v3"].queue_depth == 2 and by_name["pony-v3"].workers == 1
    assert by_name["pony-v3"].wait_for_new_job_s == 12.0 and by_name["pony-v4"].queue_depth == 0
    assert "pony-v3: 2 waiting, 1 worker(s)" in describe_status(status)
    text = generate_latest(serve(0, conn, list(settings.models))).decode()
    assert 'ponybot_queue_depth{model="pony-v3"} 2.0' in text and 'ponybot_queue_depth{model="pony-v4"} 0.0' in text
    assert 'ponybot_workers_online{model="pony-v3"} 1.0' in text
