"""``ponybot generate`` and ``ponybot worker``: every failure a clear message and a non-zero exit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from ponybot import keys
from ponybot.queue import generation_queue
from tests.conftest import cli_env, run_cli


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--steps", "0"], "steps:"),
        (["--steps", "51"], "steps: at most 50"),
        (["--cfg", "30"], "cfg:"),
        (["--size", "300x300"], "size: must be a multiple of 64"),
        (["--size", "1024x1024"], "size: 1024x1024 is over this bot's budget"),
        (["--size", "big"], "size: must look like 512x768"),
        (["--count", "9"], "count:"),
        (["--seed", "-5"], "seed:"),
        (["--sampler", "plms"], "sampler: must be one of ddim, euler_a, dpmpp_2m_karras"),
        (["--clip-skip", "3"], "clip_skip:"),
    ],
)
def test_bad_options_named(option: list[str], message: str, tmp_path: Path, model_cache: Path,
                           redis_url: str, conn: redis.Redis) -> None:
    result = run_cli(["generate", "pony", *option], cli_env(redis_url, model_cache), tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert generation_queue(conn).count == 0


def test_empty_prompt(tmp_path: Path, model_cache: Path, redis_url: str) -> None:
    result = run_cli(["generate", "  "], cli_env(redis_url, model_cache), tmp_path)
    assert result.returncode == 2
    assert "prompt: must not be empty" in result.stderr


def test_no_worker_online(tmp_path: Path, model_cache: Path, redis_url: str, conn: redis.Redis) -> None:
    env = cli_env(redis_url, model_cache, PONYBOT_CLI__NO_WORKER_TIMEOUT_S="1")
    result = run_cli(["generate", "pony", "--seed", "1"], env, tmp_path)
    assert result.returncode == 1
    assert "no worker holding the model 'pony-v4' has been online" in result.stderr
    assert "ponybot worker" in result.stderr
    assert generation_queue(conn).count == 0  # not left behind for nobody


def test_redis_unreachable(tmp_path: Path, model_cache: Path) -> None:
    result = run_cli(["generate", "pony"], cli_env("redis://127.0.0.1:1/0", model_cache), tmp_path)
    assert result.returncode == 1
    assert "Redis at redis://127.0.0.1:1/0 is unreachable" in result.stderr


def test_no_redis_configured_for_worker(tmp_path: Path, model_cache: Path) -> None:
    result = run_cli(["worker"], cli_env(None, model_cache), tmp_path)
    assert result.returncode == 1
    assert "set redis.url" in result.stderr


def test_missing_model_path(tmp_path: Path, model_cache: Path, redis_url: str, conn: redis.Redis,
                            run_main: Any) -> None:
    result = run_main(["generate", "pony", "--local", "--model", str(tmp_path / "nope")],
                      cli_env(redis_url, model_cache), tmp_path)
    assert result.returncode == 3  # the worker cannot start: `up` does not restart it
    assert f"model path {tmp_path / 'nope'} does not exist" in result.stderr


def test_corrupt_checkpoint(tmp_path: Path, model_cache: Path, redis_url: str, conn: redis.Redis,
                            run_main: Any) -> None:
    checkpoint = tmp_path / "pony.safetensors"
    checkpoint.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all, just bytes")
    env = cli_env(redis_url, model_cache)
    result = run_main(["generate", "pony", "--local", "--model", str(checkpoint)], env, tmp_path)
    assert result.returncode == 3  # the worker cannot start: `up` does not restart it
    assert "set model.config_dir" in result.stderr
    env["PONYBOT_MODEL__CONFIG_DIR"] = str(model_cache / "tiny-v2")
    result = run_main(["generate", "pony", "--local", "--model", str(checkpoint)], env, tmp_path)
    assert result.returncode == 3  # the worker cannot start: `up` does not restart it
    assert "could not load model" in result.stderr
    assert "pony.safetensors" in result.stderr


def test_pickle_checkpoint_refused(tmp_path: Path, model_cache: Path, redis_url: str, conn: redis.Redis,
                                   run_main: Any) -> None:
    checkpoint = tmp_path / "pony.ckpt"
    checkpoint.write_bytes(b"whatever")
    result = run_main(["generate", "pony", "--local", "--model", str(checkpoint)],
                      cli_env(redis_url, model_cache), tmp_path)
    assert result.returncode == 3  # the worker cannot start: `up` does not restart it
    assert "pickle checkpoints can run code" in result.stderr


def test_bad_config_value(tmp_path: Path, model_cache: Path) -> None:
    env = cli_env(None, model_cache, PONYBOT_LIMITS__MAX_STEPS="many")
    result = run_cli(["generate", "pony"], env, tmp_path)
    assert result.returncode == 2
    assert "limits.max_steps" in result.stderr
    assert keys.GENERATE_QUEUE not in result.stderr


def test_on_demand_waits_for_the_worker_its_job_starts(tmp_path: Path, model_cache: Path, redis_url: str,
                                                       conn: redis.Redis, runtime: Any) -> None:
    """worker.on_demand (KEDA scaling to zero): no worker online is not an error; the queued job starts one."""
    import subprocess
    import sys
    import time

    from tests.bot_harness import ThreadWorker
    from tests.conftest import wait_until

    env = cli_env(redis_url, model_cache, PONYBOT_CLI__NO_WORKER_TIMEOUT_S="0.5", PONYBOT_WORKER__ON_DEMAND="true")
    command = [sys.executable, "-m", "ponybot", "generate", "pony", "--seed", "3", "--size", "256x256", "--steps", "2"]
    waiting = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        wait_until(lambda: generation_queue(conn).count == 1, what="the job queued")
        time.sleep(2)  # the scenario: a worker pod takes a while to start (four times the no-worker timeout)
        assert waiting.poll() is None, waiting.communicate()
        ThreadWorker(runtime).work(burst=True)  # the worker that started for it
        out, err = waiting.communicate(timeout=300)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 0, err
    assert out.strip().endswith("seed=3") and (tmp_path / out.split("\t")[0]).is_file()
