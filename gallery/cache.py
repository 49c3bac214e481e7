"""List pages as signed-out visitors see them, kept a moment (``gallery.public_cache_s``).

A link to the gallery posted in a busy server brings many signed-out visitors to the same few
pages at once; they all see the same HTML, so one rendering serves them for a second or two.
Signed-in members are never served from it (their pages differ: opt-ins, names, tokens). What
changes here (ingest, delete, hide, forget-me) clears it; another gallery process's copy is at
most ``public_cache_s`` old. Image pages and files are never cached here: they are checked on
every request.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

#: Pages kept at most (searches make many keys; the oldest go first).
MAX_PAGES = 512


class PageCache:
    def __init__(self, ttl_s: float, max_pages: int = MAX_PAGES) -> None:
        self.ttl_s, self.max_pages = ttl_s, max_pages
        self.pages: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    def get(self, key: str) -> bytes | None:
        with self.lock:
            found = self.pages.get(key)
            if found is None:
                return None
            if time.monotonic() >= found[0]:
                del self.pages[key]
                return None
            return found[1]

    def put(self, key: str, body: bytes) -> None:
        if not self.enabled:
            return
        with self.lock:
            self.pages[key] = (time.monotonic() + self.ttl_s, body)
            self.pages.move_to_end(key)
            while len(self.pages) > self.max_pages:
                self.pages.popitem(last=False)

    def clear(self) -> None:
        with self.lock:
            self.pages.clear()
