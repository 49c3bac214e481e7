"""``ponybot gallery`` as an operator runs it: a process that upgrades its database, stores what the bot
hands over (its ingest loop) and serves the site; and ``ponybot up`` starting it when enabled."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from ponybot.commands.up import Supervisor
from ponybot.errors import ConfigError
from ponybot.preflight import check_port
from ponybot.settings import load_settings
from tests.conftest import PATIENCE_S, ROOT, cli_env
from tests.gallery_harness import hand_over


def free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def serve_and_stop(env: dict[str, str], port: int, path: str, expected: str) -> None:
    """``ponybot gallery`` until ``path`` answers with ``expected`` (on a kept-alive connection, as browsers
    do), then SIGTERM: it must exit 0 without a traceback."""
    process = subprocess.Popen([sys.executable, "-m", "ponybot", "gallery"], env=env, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5, follow_redirects=True) as client:
            deadline = time.monotonic() + PATIENCE_S
            page = None
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    page = client.get(path)
                    if page.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            exited = process.poll()
            assert page is not None and page.status_code == 200, (exited, process.communicate()[0] if exited else "")
            assert expected in page.text
            process.send_signal(signal.SIGTERM)  # with the connection still open: the server closes it
            output, _ = process.communicate(timeout=PATIENCE_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output
    assert "Traceback" not in output


def gallery_env(tmp_path: Path, redis_url: str, model_cache: Path, port: int) -> dict[str, str]:
    return cli_env(redis_url, model_cache, PONYBOT_GALLERY__ENABLED="true", PONYBOT_GALLERY__PORT=str(port),
                   PONYBOT_GALLERY__HOST="127.0.0.1", PONYBOT_GALLERY__DATABASE_URL=f"sqlite:///{tmp_path}/gallery.db",
                   PONYBOT_GALLERY__STORE_DIR=str(tmp_path / "images"))


def test_gallery_process_ingests_and_serves(tmp_path: Path, redis_url: str, conn: redis.Redis,
                                            model_cache: Path) -> None:
    port = free_port()
    job = hand_over(conn, "trixie on stage")  # handed over before the gallery ever ran
    serve_and_stop(gallery_env(tmp_path, redis_url, model_cache, port), port, f"/j/{job.id}", "trixie on stage")
    assert (tmp_path / "gallery.db").is_file()


def test_a_restarted_gallery_serves_again_at_once(tmp_path: Path, redis_url: str, conn: redis.Redis,
                                                  model_cache: Path) -> None:
    """Connections the old process served linger in TIME_WAIT on its port; the new one binds over them (as
    uvicorn's own bind with SO_REUSEADDR would), instead of refusing to start for a minute."""
    port = free_port()
    job = hand_over(conn, "trixie restarted")
    env = gallery_env(tmp_path, redis_url, model_cache, port)
    serve_and_stop(env, port, f"/j/{job.id}", "trixie restarted")
    serve_and_stop(env, port, f"/j/{job.id}", "trixie restarted")


def time_wait_port() -> Iterator[int]:
    """A port whose server closed an accepted connection first: it lingers in TIME_WAIT, nothing listens."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server's side closes first: its end goes to TIME_WAIT
    client.recv(1)
    client.close()
    listener.close()
    yield port


def listening_port() -> Iterator[int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    yield listener.getsockname()[1]
    listener.close()


@pytest.mark.parametrize(("state", "refused"), [(time_wait_port, False), (listening_port, True)],
                         ids=["time-wait", "listening"])
def test_port_check_agrees_with_the_servers_bind(state: Callable[[], Iterator[int]], refused: bool) -> None:
    for port in state():
        if refused:
            with pytest.raises(ConfigError) as error:
                check_port(port, "gallery.port", "127.0.0.1", "pick another")
            assert str(error.value).splitlines() == [str(error.value)]
            assert str(error.value).startswith(f"gallery.port: port {port} is not free on 127.0.0.1")
        else:
            check_port(port, "gallery.port", "127.0.0.1", "pick another")


def test_up_starts_the_gallery_when_enabled(tmp_path: Path) -> None:
    for enabled in (False, True):
        settings = load_settings(None, worker={"device": "cpu"}, gallery={"enabled": enabled})
        supervisor = Supervisor(settings, config=None, workers=1)
        supervisor.plan("redis://127.0.0.1:1/0")
        names = [child.name for child in supervisor.children]
        assert ("gallery" in names) is enabled
        if enabled:
            gallery = next(child for child in supervisor.children if child.name == "gallery")
            assert gallery.args[-1] == "gallery"


def test_a_loopback_public_url_is_warned_about() -> None:
    """The bot's Gallery links use gallery.public_url: a loopback default left in a deployment links nowhere."""
    from ponybot.settings import GallerySettings

    assert "a loopback address" in (GallerySettings(enabled=True).public_url_warning() or "")
    assert "PONYBOT_GALLERY__PUBLIC_URL" in (GallerySettings(enabled=True, public_url="http://localhost:8080")
                                             .public_url_warning() or "")
    assert GallerySettings(enabled=True, public_url="https://gallery.example.com").public_url_warning() is None
    assert GallerySettings(enabled=False).public_url_warning() is None  # no links at all
