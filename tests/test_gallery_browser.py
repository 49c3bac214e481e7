"""A real browser on the gallery: headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driven by Selenium.

It signs in through the Discord OAuth2 fake, browses newest and top, searches, opens an image,
likes it and deletes it, taking a screenshot at each step; one check that the images render.
``make test`` installs the browser (apt-get) where it can; without one these tests skip, saying so.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from gallery.server import build_app, ingest_for
from tests.browser import chromium, keep_for_docs, needs_browser
from tests.discord_fake.oauth import OAuthFake
from tests.gallery_harness import gallery_settings, hand_over

pytestmark = needs_browser
#: The steps whose screenshots the docs show (``make screenshots``), by their name there.
FOR_DOCS = {"1-newest-signed-out": "gallery-newest", "4-search": "gallery-search", "5-liked": "gallery-image"}

AUTHOR = 1200


@pytest.fixture
def served(tmp_path: Path, conn: redis.Redis, oauth_fake: OAuthFake) -> Iterator[str]:
    """The gallery on a loopback port, with a few images by AUTHOR."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = build_app(gallery_settings(tmp_path, oauth=oauth_fake, public_url=base))
    state = app.state.gallery
    for prompt in ("pinkie pie with balloons", "rarity sewing a dress", "applejack in the orchard"):
        hand_over(conn, prompt, user=AUTHOR, size=(256, 256))
    ingest_for(state, conn).drain()
    oauth_fake.sign_in_as(AUTHOR, "Author", {1: False})
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        state.engine.dispose()


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver


def wait(driver: Any, predicate: Any, timeout: float = 60) -> Any:
    """Polls predicate until it holds. A form post reloads the page under the predicate's feet, so an element
    that went stale, or is not there yet, counts as "not yet" rather than a failure."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, timeout, ignored_exceptions=ignored).until(lambda d: predicate(d))


def rendered_images(driver: Any) -> list[int]:
    """naturalWidth of each image on the page, once every image finished loading."""
    wait(driver, lambda d: d.execute_script("return [...document.images].every(i => i.complete)"))
    widths: list[int] = driver.execute_script("return [...document.images].map(i => i.naturalWidth)")
    return widths


def test_browse_sign_in_search_like_delete(served: str, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    shots = tmp_path / "screenshots"
    shots.mkdir()

    def shot(name: str) -> None:
        assert browser.save_screenshot(str(shots / f"{name}.png"))
        if name in FOR_DOCS:
            keep_for_docs(FOR_DOCS[name], (shots / f"{name}.png").read_bytes())

    browser.get(served + "/")
    assert "Newest" in browser.title
    widths = rendered_images(browser)
    assert len(widths) == 3 and all(width > 0 for width in widths), widths  # the thumbnails really render
    style = "return getComputedStyle(document.querySelector('header')).backgroundColor"
    assert browser.execute_script(style) == "rgb(43, 37, 51)"  # the stylesheet applies under the site's CSP
    shot("1-newest-signed-out")

    browser.find_element(By.ID, "nav-login").click()  # through Discord's authorize page and back
    wait(browser, lambda d: d.find_elements(By.ID, "nav-me"))
    assert browser.find_element(By.ID, "nav-me").text == "Author"
    shot("2-signed-in")

    browser.find_element(By.ID, "nav-top").click()
    wait(browser, lambda d: "Top" in d.title)
    assert len(browser.find_elements(By.CSS_SELECTOR, ".grid img")) == 3
    shot("3-top")

    box = browser.find_element(By.ID, "search")
    box.send_keys("rarity")
    box.submit()
    wait(browser, lambda d: "q=rarity" in d.current_url)
    results = browser.find_elements(By.CSS_SELECTOR, ".grid img")
    assert [r.get_attribute("alt") for r in results] == ["rarity sewing a dress"]
    shot("4-search")

    results[0].click()
    wait(browser, lambda d: d.find_elements(By.ID, "parameters"))
    assert "/generate prompt:rarity sewing a dress" in browser.find_element(By.ID, "command").text
    assert rendered_images(browser)[0] == 256  # the full PNG
    image_url = browser.current_url
    browser.find_element(By.ID, "like").click()
    wait(browser, lambda d: d.find_element(By.ID, "likes").text == "1")
    shot("5-liked")

    browser.find_element(By.ID, "delete").click()
    wait(browser, lambda d: "/u/" in d.current_url)
    assert len(browser.find_elements(By.CSS_SELECTOR, ".grid img")) == 2
    shot("6-after-delete")
    browser.get(image_url)
    assert browser.find_element(By.ID, "error").text.startswith("No such image")
    assert sorted(p.name for p in shots.iterdir()) == ["1-newest-signed-out.png", "2-signed-in.png", "3-top.png",
                                                       "4-search.png", "5-liked.png", "6-after-delete.png"]
    assert all(p.stat().st_size > 1000 for p in shots.iterdir())
