"""Checks made before anything slow starts (a model load, a migration): folders and ports named in the
settings, each failing as one ConfigError naming the setting."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from ponybot.errors import ConfigError


def writable_folder(folder: Path, setting: str) -> Path:
    """``folder``, created if missing; ConfigError naming ``setting`` when it is a file, cannot be created, or
    cannot be written."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{setting}: {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{setting}: cannot create {folder} ({error.strerror or error})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{setting}: {folder} is not writable")
    return folder


def check_port(port: int, setting: str, host: str = "0.0.0.0", hint: str = "pick another, or 0 for no metrics"
               ) -> None:
    """A port in range and free on ``host``, checked before anything slow starts (0: off).

    The probe binds as the servers will (uvicorn, asyncio, prometheus_client: SO_REUSEADDR, IPv6 for an address
    with a colon): connections a stopped process left in TIME_WAIT do not block a restart, a listener does."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"{setting}: must be from 0 (off) to 65535, got {port}")
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ConfigError(f"{setting}: port {port} is not free on {host} ({error.strerror or error}): "
                              f"{hint}") from None
