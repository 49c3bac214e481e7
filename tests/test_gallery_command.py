"""``ponybot gallery`` as an operator runs it: a process that upgrades its database, stores what the bot
hands over (its ingest loop) and serves the site; and ``ponybot up`` starting it when enabled."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis

from ponybot.settings import load_settings
from ponybot.up import Supervisor
from tests.conftest import PATIENCE_S, ROOT, cli_env
from tests.gallery_harness import hand_over


def test_gallery_process_ingests_and_serves(tmp_path: Path, redis_url: str, conn: redis.Redis,
                                            model_cache: Path) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = cli_env(redis_url, model_cache, PONYBOT_GALLERY__ENABLED="true", PONYBOT_GALLERY__PORT=str(port),
                  PONYBOT_GALLERY__DATABASE_URL=f"sqlite:///{tmp_path}/gallery.db",
                  PONYBOT_GALLERY__STORE_DIR=str(tmp_path / "images"))
    job = hand_over(conn, "trixie on stage")  # handed over before the gallery ever ran
    process = subprocess.Popen([sys.executable, "-m", "ponybot", "gallery"], env=env, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + PATIENCE_S
        page = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/j/{job.id}", follow_redirects=True, timeout=5)
                if page.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert page is not None and page.status_code == 200, process.poll()
        assert "trixie on stage" in page.text
        assert (tmp_path / "gallery.db").is_file()
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=PATIENCE_S)
    assert process.returncode == 0, output
    assert "Traceback" not in output


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
