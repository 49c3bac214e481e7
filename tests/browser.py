"""Headless Chromium for the tests that look at pages (Debian's ``chromium`` + ``chromium-driver``, Selenium),
and the screenshots the docs show (``make screenshots`` sets PONYBOT_DOCS_IMAGES to docs/images)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="no headless Chromium: install Debian's chromium and chromium-driver (make install does it as root)")


@contextmanager
def chromium(width: int = 1280, height: int = 1000) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--renderer-process-limit=1", "--hide-scrollbars"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER or ""))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def keep_for_docs(name: str, png: bytes) -> Path | None:
    """Writes a screenshot into the docs' pictures when PONYBOT_DOCS_IMAGES names their folder (else nothing)."""
    folder = os.environ.get("PONYBOT_DOCS_IMAGES")
    if not folder:
        return None
    path = Path(folder) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path
