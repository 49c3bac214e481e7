"""Helpers the benchmarks share: the machine they ran on, tables, percentiles, the tiny model on a private Redis."""

from __future__ import annotations

import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def wait_for_port(port: int, server: subprocess.Popen[Any], what: str, patience_s: float = 120) -> None:
    """Until ``server`` accepts connections on loopback ``port``; SystemExit naming ``what`` when it exits or
    does not within ``patience_s``."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"{what} did not start") from None
            time.sleep(0.2)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()} · {cpu} · {os.cpu_count()} CPUs · Python {platform.python_version()}"


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1]


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(map(str, header))] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(cells[0], widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells[1:]]
    return "\n".join(lines)


@dataclass
class TinyBench:
    """What the CPU benchmarks of the worker share: a private Redis, the tiny model, its settings."""

    scratch: Path
    conn: Any
    settings: Any
    generator: Any
    folder: Path


@contextmanager
def tiny_bench(threads: int) -> Iterator[TinyBench]:
    """A private Redis, the tiny model built and loaded on the CPU, torch on ``threads`` threads
    (imported here: benchmarks of the bot alone must not load torch)."""
    import torch

    from ponybot.queue import connect
    from ponybot.redis_server import EmbeddedRedis
    from ponybot.settings import ModelSettings, Settings
    from worker.generate import Generator
    from worker.loading import load_model, resolve_device
    from worker.tiny import ensure_tiny_pipeline

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as name, EmbeddedRedis(Path(name) / "redis", persistent=False) as redis:
        scratch = Path(name)
        folder = ensure_tiny_pipeline(scratch / "models")
        settings = Settings(model=ModelSettings(source="tiny", cache_dir=scratch / "models"))
        generator = Generator(load_model("tiny", settings.model, resolve_device("cpu")))
        yield TinyBench(scratch, connect(redis.url), settings, generator, folder)
