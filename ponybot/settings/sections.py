"""The runtime sections of the settings: Redis, workers, limits, defaults, uploads, Discord, metrics, the
command line and logging (what members may ask for, the models and the content rules live beside them)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from ponybot.connection import OUTAGE_PATIENCE_S
from ponybot.schemas import Sampler, parse_size
from ponybot.settings.base import Section


def check_redis_url(value: str) -> str:
    """A URL redis-py can connect to: redis://, rediss:// or unix://, a host, a port from 1 to 65535, a db number."""
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must look like redis://host:6379/0 (or rediss://, unix://)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("its port must be a number from 1 to 65535") from None
    if port == 0:
        raise ValueError("its port must be a number from 1 to 65535")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("has no host: it must look like redis://host:6379/0")
    database = parts.path.strip("/")
    if parts.scheme != "unix" and database and not database.isdigit():
        raise ValueError(f"its database must be a number (the /0 at the end), got {database!r}")
    return value


class RedisSettings(Section):
    url: str | None = None
    embedded_dir: Path = Path("data/redis")
    #: from the environment as JSON or comma-separated: ``sentinel-0:26379,sentinel-1:26379``
    sentinels: Annotated[list[Annotated[str, AfterValidator(lambda item: sentinel_address(item) and item)]],
                         NoDecode] = Field(default_factory=list)
    master_name: str = "ponybot"
    #: how long a wait (the CLI's for its job, the bot's delivery and progress, the gallery's ingest) rides
    #: out Redis going away (a restart, a Sentinel failover) before it says so
    outage_patience_s: float = Field(OUTAGE_PATIENCE_S, ge=1, le=86400)

    @field_validator("sentinels", mode="before")
    @classmethod
    def _sentinel_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if not text.startswith("["):
                return [item.strip() for item in text.split(",") if item.strip()]
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                raise ValueError("is neither a JSON list nor comma-separated host:port items") from None
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return check_redis_url(value) if value else value


def sentinel_address(item: str) -> tuple[str, int]:
    """``host:port`` of a Redis Sentinel, or ValueError saying what is wrong with it."""
    host, sep, port = item.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{item!r} is not host:port (e.g. sentinel-0.redis:26379)")
    return host.strip("[]"), int(port)


class WorkerSettings(Section):
    device: str = "auto"
    result_ttl_s: int = Field(3600, ge=60)
    job_timeout_s: int | None = Field(None, ge=10)
    max_attempts: int = Field(2, ge=1, le=10)
    max_batch: int = Field(1, ge=1, le=16)
    batch_window_ms: int = Field(50, ge=0, le=5000)
    preview_every: int = Field(5, ge=0, le=150)
    step_budget_s: float | None = Field(None, gt=0)
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = (
        "max-autotune-no-cudagraphs"
    )
    cuda_graphs: bool = True
    overlap_depth: int = Field(1, ge=0, le=2)
    vae_decode: Literal["auto", "batched", "sliced"] = "auto"
    fast_interval: int = Field(3, ge=2, le=10)
    heartbeat_s: int = Field(10, ge=1, le=300)
    maintenance_s: int = Field(30, ge=1)
    cpu_threads: int = Field(0, ge=0, le=256)
    #: Workers start when jobs wait (KEDA scaling to zero): the bot queues a configured model's jobs even
    #: while no worker online holds it, and tells the member one is starting.
    on_demand: bool = False

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            return value
        raise ValueError("must be auto, cpu, cuda, cuda:N or mps")


class LimitSettings(Section):
    max_steps: int = Field(50, ge=1, le=150)
    max_pixels: int = Field(768 * 768, ge=256 * 256, le=1024 * 1024)
    max_count: int = Field(4, ge=1, le=4)
    max_queue: int = Field(200, ge=1)
    max_queued_per_member: int = Field(2, ge=1)
    max_queued_per_guild: int = Field(20, ge=1)
    max_upscale_pixels: int = Field(1024 * 1024, ge=256 * 256, le=2048 * 2048)
    #: A configured model's jobs wait while no worker holds it (one is starting or restarting), unless its
    #: last worker left longer ago than this: then /generate refuses them.
    worker_gone_refuse_s: int = Field(600, ge=0)


class UploadSettings(Section):
    """Pictures members upload for img2img: checked by the bot before anything is queued."""

    max_bytes: int = Field(8 * 1024 * 1024, ge=1024, le=100 * 1024 * 1024)
    max_pixels: int = Field(4096 * 4096, ge=64 * 64, le=10_000 * 10_000)
    max_side: int = Field(8192, ge=64, le=20_000)


class DefaultSettings(Section):
    steps: int = Field(25, ge=1, le=150)
    cfg: float = Field(7.5, ge=1, le=20)
    size: str = "512x512"
    count: int = Field(1, ge=1, le=4)
    sampler: Sampler = Sampler.DDIM
    clip_skip: Literal[1, 2] = 2
    negative_prompt: str = ""
    quality: bool = True
    strength: float = Field(0.75, ge=0.05, le=1.0)

    @field_validator("size")
    @classmethod
    def _size(cls, value: str) -> str:
        parse_size(value)
        return value


class DiscordSettings(Section):
    token: SecretStr | None = None
    application_id: int | None = None
    api_base: str = "https://discord.com/api/v10"
    gateway_url: str = "wss://gateway.discord.gg/"
    sync_guilds: list[int] = Field(default_factory=list)
    extra_sizes: list[str] = Field(default_factory=list)
    progress_edit_interval_s: float = Field(1.5, ge=1.0)
    progress_previews: bool = True

    @field_validator("extra_sizes")
    @classmethod
    def _sizes(cls, value: list[str]) -> list[str]:
        for size in value:
            parse_size(size)
        return value


class MetricsSettings(Section):
    bot_port: int = Field(0, ge=0, le=65535)
    worker_port: int = Field(0, ge=0, le=65535)


class CliSettings(Section):
    no_worker_timeout_s: float = Field(10.0, gt=0)
    out_dir: Path = Path("out")


class LogSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
