"""``ponybot up``: everything on one machine, supervised.

An embedded Redis when none is configured (append-only file in ``redis.embedded_dir``,
so queued jobs and policies survive a restart), the image tagger fetched into the model
cache, one worker process per visible GPU (or one on the CPU), and the bot when a token
is set. Children run in their own process sessions and get exactly one SIGTERM at
shutdown: workers finish their job, the bot finishes the deliveries in hand. A child that
dies is restarted.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import FrameType

from ponybot.connection import RedisTarget
from ponybot.cpus import cpu_share
from ponybot.errors import RedisUnavailableError
from ponybot.queue import connect, resolve_redis
from ponybot.redis_server import EmbeddedRedis, running_embedded_url
from ponybot.settings import Settings

log = logging.getLogger(__name__)

RESTART_DELAY_S = 5.0
STOP_GRACE_S = 120.0


def visible_devices(setting: str) -> list[str]:
    """``worker.device`` as a list of devices to run one worker each on."""
    if setting != "auto":
        return [setting]
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                           capture_output=True, text=True, check=False)
    count = int(probe.stdout.strip() or 0) if probe.returncode == 0 else 0
    return [f"cuda:{index}" for index in range(count)] or ["cpu"]


def spread_models(models: list[str], workers: int) -> list[list[str]]:
    """The models each of ``workers`` holds: every model on at least one worker, each worker at least one.

    More workers than models: the models take turns (two GPUs, one model: both hold it). More models
    than workers: each worker holds several (three models, two GPUs: [a, c] and [b]).
    """
    if workers >= len(models):
        return [[models[index % len(models)]] for index in range(workers)]
    return [models[index::workers] for index in range(workers)]


@dataclass
class Child:
    name: str
    args: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)

    def start(self) -> None:
        log.info("starting %s", self.name)
        self.process = subprocess.Popen(self.args, env=self.env, start_new_session=True)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)


class Supervisor:
    def __init__(self, settings: Settings, *, config: str | None, workers: int | None) -> None:
        self.settings = settings
        self.config = config
        self.workers = workers
        self.children: list[Child] = []
        self.stopping = False
        self.redis: EmbeddedRedis | None = None

    def command(self, *args: str) -> list[str]:
        config = ["--config", self.config] if self.config else []
        return [sys.executable, "-m", "ponybot", *config, *args]

    def start_redis(self) -> RedisTarget | str:
        if self.settings.redis.sentinels:
            return resolve_redis(self.settings)  # the children read the same sentinels from the settings
        if self.settings.redis.url:
            return self.settings.redis.url
        if url := running_embedded_url(self.settings.redis.embedded_dir):
            return url
        self.redis = EmbeddedRedis(self.settings.redis.embedded_dir, persistent=True)
        return self.redis.start()

    def plan(self, url: RedisTarget | str) -> None:
        """A worker per device, the configured models spread over them (:func:`spread_models`), and the bot."""
        env = {**os.environ, **({"PONYBOT_REDIS__URL": url} if isinstance(url, str) else {})}
        devices = visible_devices(self.settings.worker.device)
        if devices == ["cpu"]:
            log.warning("no GPU found: one worker on the CPU; a real SD1.5 model takes minutes per image there")
        if self.workers is not None:
            devices = (devices * self.workers)[: self.workers]
        if self.settings.worker.cpu_threads == 0 and len(devices) > 1:
            # each worker's torch and onnxruntime get their share of the cores, not all of them each
            env["PONYBOT_WORKER__CPU_THREADS"] = str(cpu_share(len(devices)))
            log.info("%d workers share this host: %s CPU thread(s) each", len(devices),
                     env["PONYBOT_WORKER__CPU_THREADS"])
        port = self.settings.metrics.worker_port
        for index, (device, models) in enumerate(zip(devices, spread_models(list(self.settings.models), len(devices)),
                                                     strict=True)):
            args = self.command("worker", "--device", device, "--name", f"{socket.gethostname()}-{device}-{index}",
                                "--models", ",".join(models))
            if port:
                args += ["--metrics-port", str(port + index)]
            self.children.append(Child(f"worker {index} on {device}", args, env))
        if self.settings.gallery.enabled:
            self.children.append(Child("gallery", self.command("gallery"), env))
        token = self.settings.discord.token
        if token is not None and token.get_secret_value():
            self.children.append(Child("bot", self.command("bot"), env))
        else:
            log.warning(
                "no Discord token: the bot is not started. Set DISCORD_TOKEN (or [discord] token in config.toml). "
                "Meanwhile try a generation without Discord: ponybot generate \"pinkie pie\" --seed 42"
            )

    def run(self) -> int:
        for stop_signal in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop_signal, self.request_stop)
        url = self.start_redis()
        try:
            connect(url)
        except RedisUnavailableError:
            self.shutdown()
            raise
        log.info("Redis at %s", RedisTarget.of(url).describe())
        self.plan(url)
        self.fetch_tagger()
        for child in self.children:
            child.start()
        try:
            while not self.stopping:
                time.sleep(0.5)
                self.restart_dead()
        finally:
            self.shutdown()
        return 0

    def fetch_tagger(self) -> None:
        """The image tagger into the model cache once, before the workers start (they would each fetch it)."""
        if not self.settings.safety.tagger_enabled or not any(c.name.startswith("worker") for c in self.children):
            return
        fetched = subprocess.run(self.command("safety", "fetch"), check=False)
        if fetched.returncode != 0:
            log.error("the image tagger %s could not be fetched: the workers start without it, and SFW channels "
                      "get no images until it is there", self.settings.safety.tagger)

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        log.info("stopping (signal %d): workers finish their jobs first", signum)
        self.stopping = True

    def restart_dead(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.process is not None and child.process.poll() is not None and not self.stopping:
                child.restarts = [t for t in child.restarts if now - t < 300] + [now]
                log.error("%s exited with %s; restarting in %.0f s", child.name, child.process.returncode,
                          RESTART_DELAY_S * len(child.restarts))
                time.sleep(min(RESTART_DELAY_S * len(child.restarts), 60))
                child.start()

    def shutdown(self) -> None:
        for child in self.children:
            child.stop()
        deadline = time.monotonic() + STOP_GRACE_S
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("%s did not stop in time: killing it", child.name)
                child.process.kill()
                child.process.wait()
        if self.redis is not None:
            self.redis.stop()
        log.info("stopped")
