"""The local checks of ``ponybot doctor``: config and secrets, Redis, the models and tagger in the cache, torch
against the machine, free disk, the gallery's database. Each returns its lines; none downloads anything."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import redis

from ponybot.commands.findings import Finding, Options, finding
from ponybot.errors import ConfigError, RedisUnavailableError
from ponybot.queue import redis_reason, resolve_redis
from ponybot.settings import Settings

GIB = 1024 ** 3
#: What a worker needs in VRAM for an SD 1.5 model at its dtype: the weights plus a 512x512 batch's work.
VRAM_NEED = {"float16": 3.5 * GIB, "float32": 6.5 * GIB}
TINY_SOURCE = "tiny"


def config(settings: Settings, options: Options) -> list[Finding]:
    found = [finding("config", True, f"parsed; models: {', '.join(settings.models)} "
                                     f"(default {settings.default_model})")]
    try:
        settings.require_discord_token()
        found.append(finding("secrets", True, "discord.token is set"))
    except ConfigError as error:
        found.append(finding("secrets", False, "discord.token is not set", str(error).split(": ", 1)[-1]))
    if settings.gallery.enabled and settings.gallery.sign_in:
        try:
            settings.gallery.require_secrets()
            found.append(finding("gallery secrets", True, "client_secret and session_secret are set"))
        except ConfigError as error:
            found.append(finding("gallery secrets", False, "incomplete", str(error)))
    return found


def redis_server(settings: Settings, options: Options) -> list[Finding]:
    try:
        target = resolve_redis(settings)
    except RedisUnavailableError:  # nothing configured and no embedded one running yet: `ponybot up` starts it
        return [finding("redis", True, f"none configured: ponybot up runs an embedded one in "
                                       f"{settings.redis.embedded_dir} (set redis.url for a shared one)")]
    where = target.describe()
    client = target.client(socket_timeout=3, socket_connect_timeout=3)
    try:
        info = client.info("server")
        persistence = client.info("persistence")
        replication = client.info("replication")
    except redis.RedisError as error:
        return [finding("redis", False, f"{where} does not answer ({redis_reason(error)})",
                        "start Redis there, or point redis.url (PONYBOT_REDIS__URL) or redis.sentinels at yours")]
    finally:
        client.close()
    saving = ("append-only file on" if persistence.get("aof_enabled") else
              "append-only file off (appendonly yes keeps queued jobs and finished images over a Redis restart)")
    line = f"{where}: Redis {info.get('redis_version', '?')}, {saving}"
    if target.sentinels:
        line += (f", primary {target.master_name!r} found through {len(target.sentinels)} sentinel(s), "
                 f"{replication.get('connected_slaves', 0)} replica(s) connected")
    return [finding("redis", True, line)]


def model_cached(source: str, cache_dir: Path) -> str | None:
    """Where the model is found without any download, or None."""
    from huggingface_hub import try_to_load_from_cache

    if source == TINY_SOURCE:
        matches = sorted(cache_dir.glob("tiny-*/model_index.json"))
        return str(matches[-1].parent) if matches else None
    path = Path(source).expanduser()
    if path.suffix == ".safetensors":
        return str(path) if path.is_file() else None
    if path.is_dir():
        return str(path) if (path / "model_index.json").is_file() else None
    if source.count("/") != 1 or source.startswith((".", "/", "~")):
        return None
    cached = try_to_load_from_cache(source, "model_index.json", cache_dir=str(cache_dir))
    return str(Path(cached).parent) if isinstance(cached, str) else None


def models(settings: Settings, options: Options) -> list[Finding]:
    from huggingface_hub import try_to_load_from_cache

    cache = settings.model.cache_dir
    found = []
    for name, entry in settings.models.items():
        where = model_cached(entry.source, cache)
        if where:
            found.append(finding(f"model {name}", True, f"{entry.source} in the cache ({where})"))
        elif entry.source == TINY_SOURCE:
            found.append(finding(f"model {name}", True, "tiny (random weights, for trying things out): built in "
                                                        "model.cache_dir at the worker's first start"))
        else:
            found.append(finding(f"model {name}", False, f"{entry.source} is not in the cache {cache}",
                                 "start the worker once on a host with internet (it downloads the model into "
                                 "model.cache_dir) and copy that folder here, or set the model's source to a "
                                 "local folder or .safetensors file"))
    if settings.safety.tagger_enabled:
        tagger = settings.safety.tagger
        files = [try_to_load_from_cache(tagger, file, cache_dir=str(cache)) for file in ("model.onnx",
                                                                                        "selected_tags.csv")]
        if all(isinstance(file, str) for file in files):
            found.append(finding("tagger", True, f"{tagger} in the cache"))
        elif "tagger" in settings.safety.required_checks:
            found.append(finding("tagger", False, f"{tagger} is not in the cache {cache} and safety.required names "
                                                  "it: SFW channels withhold every image until it is there",
                                 "run ponybot safety fetch"))
        else:  # the checks that ship with the worker decide meanwhile: not a problem, but worth knowing
            others = " and ".join(name for name in settings.safety.enabled_checks if name != "tagger")
            found.append(finding("tagger", True, f"{tagger} is not in the cache {cache}: SFW channels get the images "
                                                 f"{others} pass; run ponybot safety fetch to add the tagger's "
                                                 "art-aware check"))
    return found


def gpu_visible() -> bool:
    """An NVIDIA GPU on this machine, whatever torch sees."""
    return shutil.which("nvidia-smi") is not None or Path("/dev/nvidia0").exists()


def torch_build(settings: Settings, options: Options) -> list[Finding]:
    import torch

    device = settings.worker.device
    built = torch.version.cuda
    if not torch.cuda.is_available():
        if gpu_visible():
            return [finding("torch", False, f"torch {torch.__version__} does not see the GPU of this machine "
                                            f"({'a CPU-only build' if built is None else f'built for CUDA {built}'})",
                            "install the CUDA build of torch that matches the driver (pip install torch "
                            "--index-url https://download.pytorch.org/whl/cu124)")]
        if device.startswith("cuda"):
            return [finding("torch", False, f"worker.device is {device} but there is no GPU",
                            "set worker.device = \"auto\" or \"cpu\"")]
        return [finding("torch", True, f"torch {torch.__version__}, no GPU: the worker runs on the CPU (a "
                                       "full-size image takes minutes; the tiny model is quick)")]
    index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
    free, total = torch.cuda.mem_get_info(index)
    major, minor = torch.cuda.get_device_capability(index)
    name = torch.cuda.get_device_name(index)
    need = VRAM_NEED["float16"]
    line = (f"torch {torch.__version__} (CUDA {built}) sees {name}, compute capability {major}.{minor}, "
            f"{free / GIB:.1f} of {total / GIB:.1f} GiB free (a model in fp16 needs about {need / GIB:.1f} GiB)")
    if free < need:
        return [finding("torch", False, line, "free the GPU (another process holds its memory) or use a smaller "
                                              "size and count")]
    return [finding("torch", True, line)]


def data_folders(settings: Settings) -> dict[str, Path]:
    folders = {"model.cache_dir": settings.model.cache_dir, "cli.out_dir": settings.cli.out_dir,
               "redis.embedded_dir": settings.redis.embedded_dir}
    if settings.gallery.enabled and settings.gallery.store == "folder":
        folders["gallery.store_dir"] = settings.gallery.store_dir
    return folders


def existing_parent(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk(settings: Settings, options: Options) -> list[Finding]:
    found = []
    need = options.min_free_gb * 1e9
    for setting, folder in data_folders(settings).items():
        free = shutil.disk_usage(existing_parent(folder)).free
        line = f"{setting} ({folder}): {free / 1e9:.1f} GB free"
        if free < need:
            found.append(finding(f"disk {setting}", False, f"{line}, less than {options.min_free_gb:g} GB",
                                 f"free space there or move {setting} to a larger disk"))
        elif not os.access(existing_parent(folder), os.W_OK):
            found.append(finding(f"disk {setting}", False, f"{line}, but not writable",
                                 f"give this user write access, or set {setting} elsewhere"))
        else:
            found.append(finding(f"disk {setting}", True, line))
    return found


def gallery_database(settings: Settings, options: Options) -> list[Finding]:
    if not settings.gallery.enabled:
        return [finding("gallery", True, "off (gallery.enabled is false)")]
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    from ponybot.connection import redact

    url = settings.gallery.database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return [finding("gallery", True, f"{url}: not created yet (ponybot gallery creates it at start)")]
    engine = create_engine(url, connect_args={"connect_timeout": 5} if url.startswith("postgresql") else {})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as error:
        reason = str(getattr(error, "orig", None) or error).splitlines()[0]
        return [finding("gallery", False, f"{redact(url)} does not answer ({reason})",
                        "start the database, or fix gallery.database_url")]
    finally:
        engine.dispose()
    return [finding("gallery", True, f"{redact(url)} answers")]
