"""``ponybot gallery``: upgrade the database, start the ingest loop, serve the site.

Public-only or with sign-in: without ``gallery.client_id`` the site runs public-only
(signed-out visitors see SFW images, no sessions at all); with it, the client secret
and the session secret must be set too, or start-up stops with a ConfigError.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import redis
import uvicorn
from sqlalchemy import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from starlette.applications import Starlette

from gallery.app import create_app
from gallery.auth import DiscordOAuth
from gallery.cache import PageCache
from gallery.db import make_engine, optimize_search, upgrade
from gallery.ingest import Ingest
from gallery.limits import RateLimiter
from gallery.site import Gallery, templates
from gallery.store import ImageStore, build_store
from ponybot.connection import OUTAGE_PATIENCE_S, RedisTarget
from ponybot.errors import ConfigError, PonybotError
from ponybot.settings import Settings

log = logging.getLogger(__name__)


def open_database(url: str) -> Engine:
    """The gallery's database, upgraded to the newest schema; ConfigError naming ``gallery.database_url`` when the
    URL is not one SQLAlchemy can use, PonybotError when the database cannot be reached or written."""
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except ArgumentError as error:
        raise ConfigError(f"gallery.database_url: not a database URL ({error}); e.g. sqlite:///data/gallery/"
                          "gallery.db or postgresql+psycopg://ponybot@db/gallery") from None
    try:
        engine = make_engine(url)
        upgrade(engine)
        optimize_search(engine)
    except ArgumentError as error:  # an unknown dialect or driver, or options it refuses
        raise ConfigError(f"gallery.database_url: {shown} cannot be used ({error})") from None
    except (SQLAlchemyError, OSError) as error:
        cause = getattr(error, "orig", None) or error
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise PonybotError(f"gallery.database_url: cannot open {shown} ({reason})") from None
    return engine


def build_app(settings: Settings, store: ImageStore | None = None, conn: redis.Redis | None = None) -> Starlette:
    """The site for these settings, its database upgraded to the newest schema; with ``conn`` its rate limits are
    kept in Redis, shared by every gallery process."""
    section = settings.gallery
    oauth, session_secret = None, None
    if section.sign_in:
        client_secret, session_secret = section.require_secrets()
        oauth = DiscordOAuth(section, settings.discord.api_base, client_secret)
    store = store or build_store(section)  # a store that cannot be used stops it before the database changes
    engine = open_database(section.database_url)
    if oauth is None:
        log.warning("gallery.client_id is not set: the gallery is public-only (SFW images, no sign-in)")
    gallery = Gallery(section, engine, store, oauth, RateLimiter(conn), templates(), PageCache(section.public_cache_s))
    return create_app(gallery, session_secret)


def ingest_for(gallery: Gallery, conn: redis.Redis, outage_patience_s: float = OUTAGE_PATIENCE_S,
               where: str = "") -> Ingest:
    """The ingest loop of this site: what it stores clears the site's cached pages."""
    return Ingest(gallery.engine, gallery.store, conn, changed=gallery.pages.clear,
                  outage_patience_s=outage_patience_s, where=where)


def server_config(app: Starlette, host: str, port: int) -> uvicorn.Config:
    """uvicorn for the site: it never rewrites the client's address itself (by default it believes
    X-Forwarded-For from 127.0.0.1, which let one client dodge its limits); :mod:`gallery.proxies` does, past
    ``gallery.trusted_proxies`` only."""
    return uvicorn.Config(app, host=host, port=port, log_level="warning", proxy_headers=False)


class _Server(uvicorn.Server):
    """uvicorn, stopping on SIGTERM/SIGINT without re-raising them: the ingest loop then stops in turn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        def stop(signum: int, frame: FrameType | None) -> None:
            self.should_exit = True

        for stop_signal in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop_signal, stop)
        yield


def run_gallery(settings: Settings, redis_target: RedisTarget | str) -> None:
    target = RedisTarget.of(redis_target)
    conn = target.client(socket_timeout=10, socket_connect_timeout=5)
    app = build_app(settings, conn=conn)
    gallery: Gallery = app.state.gallery
    stopping = threading.Event()
    loop = ingest_for(gallery, conn, settings.redis.outage_patience_s, target.describe())
    ingest = threading.Thread(target=loop.run, args=(stopping,),
                              name="gallery-ingest", daemon=True)
    ingest.start()
    log.info("gallery on http://%s:%d (public address %s)", settings.gallery.host, settings.gallery.port,
             settings.gallery.public_url)
    server = _Server(server_config(app, settings.gallery.host, settings.gallery.port))
    try:
        server.run()
    finally:
        stopping.set()
        ingest.join(timeout=30)
        conn.close()
