"""``ponybot up``: everything on one machine, supervised.

An embedded Redis when none is configured (append-only file in ``redis.embedded_dir``,
so queued jobs and policies survive a restart), the image tagger fetched into the model
cache, one worker process per visible GPU
(or one on the CPU), and the bot when a token is set. Redis and every child run in
their own process sessions, so a terminal's Ctrl-C reaches only this process, which
stops them in order: the workers first (they finish the job in hand), then the bot
(it finishes the deliveries in hand), then the gallery, then Redis. A second Ctrl-C stops the workers
at once (their jobs are retried on the next start).

A child that dies is restarted after a growing delay (5 s, 10 s, 20 s ... at most
5 minutes; back to 5 s once it has run for 10 minutes). A child that exits with
:data:`EXIT_USAGE` or :data:`EXIT_CANNOT_START` (a bad setting, a model that cannot be
loaded) is not restarted: it said why, and restarting would only say it again. When no
child is left running that way, ``up`` stops Redis and exits with EXIT_CANNOT_START too.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from types import FrameType

from ponybot.connection import RedisTarget
from ponybot.cpus import cpu_share
from ponybot.errors import RedisUnavailableError
from ponybot.hints import ponybot_command
from ponybot.queue import connect, resolve_redis
from ponybot.redis_server import EmbeddedRedis, running_embedded_url
from ponybot.settings import Settings

log = logging.getLogger(__name__)

RESTART_DELAY_S = 5.0
MAX_RESTART_DELAY_S = 300.0
#: A child that ran this long is healthy again: its next restart waits RESTART_DELAY_S.
HEALTHY_AFTER_S = 600.0
STOP_GRACE_S = 120.0
POLL_S = 0.2
#: Exit codes of ``ponybot`` commands (``ponybot.commands.cli`` uses the same).
EXIT_USAGE = 2
EXIT_CANNOT_START = 3


def restart_delay(failures: int) -> float:
    """The wait before restart number ``failures`` (1, 2, ...): doubling from 5 s, at most 5 minutes."""
    return min(RESTART_DELAY_S * 2.0 ** max(0, failures - 1), MAX_RESTART_DELAY_S)


def visible_devices(setting: str) -> list[str]:
    """``worker.device`` as a list of devices to run one worker each on."""
    if setting != "auto":
        return [setting]
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                           capture_output=True, text=True, check=False, start_new_session=True)
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
    started_at: float = 0.0
    failures: int = 0  #: restarts in a row without HEALTHY_AFTER_S of running
    restart_at: float | None = None  #: when a dead child is started again
    given_up: bool = False  #: it cannot start (bad setting or model): not restarted

    def start(self) -> None:
        log.info("starting %s", self.name)
        self.process = subprocess.Popen(self.args, env=self.env, start_new_session=True)
        self.started_at = time.monotonic()
        self.restart_at = None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.running():
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)

    def wait(self, deadline: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("%s did not stop in time: killing it", self.name)
            self.process.kill()
            self.process.wait()


class Supervisor:
    def __init__(self, settings: Settings, *, config: str | None, workers: int | None) -> None:
        self.settings = settings
        self.config = config
        self.workers = workers
        self.children: list[Child] = []
        self.stopping = False
        self.signals = 0
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
                "Meanwhile try a generation without Discord: %s generate \"pinkie pie\" --seed 42",
                ponybot_command(),
            )

    @property
    def stop_order(self) -> list[list[Child]]:
        """Workers first (the bot still delivers what they finish), then the bot, then the rest (the gallery)."""
        workers = [c for c in self.children if c.name.startswith("worker")]
        bot = [c for c in self.children if c.name == "bot"]
        return [workers, bot, [c for c in self.children if c not in workers and c not in bot]]

    def run(self) -> int:
        for stop_signal in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop_signal, self.request_stop)
        try:
            url = self.start_redis()
            connect(url)
            log.info("Redis at %s", RedisTarget.of(url).describe())
            self.plan(url)
            self.fetch_tagger()
            for child in self.children:
                if not self.stopping:
                    child.start()
            while not self.stopping:
                time.sleep(POLL_S)  # a signal sets ``stopping``: seen within POLL_S, even during a back-off
                self.restart_dead()
                if self.nothing_left:
                    log.error("nothing left to run: %s could not start (see above); stopping Redis too",
                              " and ".join(child.name for child in self.children))
                    return EXIT_CANNOT_START
        except RedisUnavailableError:
            self.stopping = True
            raise
        finally:
            self.shutdown()
        return 0

    @property
    def nothing_left(self) -> bool:
        """Every child gave up (a bad setting, a model that cannot load, no token): Redis alone serves no one."""
        return bool(self.children) and all(child.given_up for child in self.children)

    def fetch_tagger(self) -> None:
        """The image tagger into the model cache once, before the workers start (they would each fetch it)."""
        if not self.settings.safety.tagger_enabled or not any(c.name.startswith("worker") for c in self.children):
            return
        fetched = subprocess.run(self.command("safety", "fetch"), check=False)
        if fetched.returncode != 0:
            withholds = "tagger" in self.settings.safety.required_checks
            log.error("the image tagger %s could not be fetched: the workers start without it, and SFW channels %s",
                      self.settings.safety.tagger, "get no images until it is there" if withholds else
                      "get the images the other checks pass (safety.required does not list the tagger)")

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1
        if self.signals == 1:
            log.info("stopping (signal %d): workers finish their jobs first, then the bot, then Redis", signum)
            self.stopping = True
            return
        log.warning("signal %d again: stopping the workers now (their jobs are retried on the next start)", signum)
        for child in self.stop_order[0]:
            if child.running():
                assert child.process is not None
                child.process.send_signal(signal.SIGTERM)  # RQ's second signal: a cold shutdown

    def restart_dead(self, now: float | None = None) -> None:
        """Schedule or perform restarts; never sleeps, so a signal is acted on at once."""
        now = time.monotonic() if now is None else now
        for child in self.children:
            if self.stopping or child.given_up or child.process is None or child.process.poll() is None:
                continue
            code = child.process.returncode
            if child.restart_at is None:
                if code in (EXIT_USAGE, EXIT_CANNOT_START):
                    child.given_up = True
                    log.error("%s cannot start (exit %d; its message is above): not restarting it. Fix the "
                              "setting or model it names, then start `%s up` again", child.name, code,
                              ponybot_command())
                    continue
                child.failures = 1 if now - child.started_at >= HEALTHY_AFTER_S else child.failures + 1
                delay = restart_delay(child.failures)
                child.restart_at = now + delay
                log.error("%s exited with %s; restarting in %.0f s (restart %d in a row)", child.name, code,
                          delay, child.failures)
            elif now >= child.restart_at:
                child.start()

    def shutdown(self) -> None:
        for group in self.stop_order:
            for child in group:
                child.stop()
            deadline = time.monotonic() + STOP_GRACE_S
            for child in group:
                child.wait(deadline)
        if self.redis is not None:
            self.redis.stop()
        log.info("stopped")
