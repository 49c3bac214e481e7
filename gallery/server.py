"""``ponybot gallery``: upgrade the database, start the ingest loop, serve the site.

Public-only or with sign-in: without ``gallery.client_id`` the site runs public-only
(signed-out visitors see SFW images, no sessions at all); with it, the client secret,
the session secret and the bot's token (``discord.token``: permissions follow Discord,
:mod:`gallery.access`) must be set too, or start-up stops with a ConfigError. A public-only
gallery given the token hides private and age-restricted channels; without it, it takes
every channel the bot posted in as open to @everyone.
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
from sqlalchemy import Engine, case, func, insert, make_url, select, update
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from starlette.applications import Starlette

from gallery.access import Access
from gallery.app import create_app
from gallery.auth import DiscordOAuth
from gallery.cache import PageCache
from gallery.db import channels, images, make_engine, optimize_search, upgrade
from gallery.discord_api import BotAPI
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
    token = settings.discord.token.get_secret_value() if settings.discord.token is not None else ""
    if section.sign_in:
        client_secret, session_secret = section.require_secrets()
        if not token:
            raise ConfigError("gallery.client_id is set, so the gallery needs the bot's token too (discord.token, "
                              "or PONYBOT_DISCORD__TOKEN): it asks Discord every gallery.permissions_max_age_s "
                              "which servers, roles and channels each member still has")
        oauth = DiscordOAuth(section, settings.discord.api_base, client_secret)
    store = store or build_store(section)  # a store that cannot be used stops it before the database changes
    engine = open_database(section.database_url)
    if oauth is None:
        log.warning("gallery.client_id is not set: the gallery is public-only (SFW images, no sign-in)")
    api = BotAPI(settings.discord.api_base, token) if token else None
    adopt_channels(engine, trusted=api is None)
    access = Access(engine, api, section.permissions_max_age_s)
    gallery = Gallery(section, engine, store, oauth, RateLimiter(conn), templates(), PageCache(section.public_cache_s),
                      access)
    return create_app(gallery, session_secret)


def adopt_channels(engine: Engine, trusted: bool) -> None:
    """Every channel images came from gets its row (images written by other means than ingest: a restore, the
    bench), unknown until Discord says who may open it. Without the bot's token nothing can say so: every channel
    not yet learned is taken as open to @everyone (what the gallery did before it asked Discord), with a warning."""
    seen = select(images.c.guild_id, images.c.channel_id, func.max(case((images.c.mode == "nsfw", 1), else_=0)))
    known = select(channels.c.id).where(channels.c.guild_id == images.c.guild_id, channels.c.id == images.c.channel_id)
    with engine.begin() as db:
        missing = db.execute(seen.where(~known.exists()).group_by(images.c.guild_id, images.c.channel_id)).all()
        if missing:
            db.execute(insert(channels), [{"guild_id": guild_id, "id": channel_id, "nsfw": bool(nsfw),
                                           "everyone_view": None} for guild_id, channel_id, nsfw in missing])
        if not trusted:
            return
        count = db.execute(update(channels).where(channels.c.everyone_view.is_(None))
                           .values(everyone_view=True)).rowcount
    log.warning("discord.token is not set: the gallery cannot ask Discord who may open a channel, so the SFW "
                "images of every channel the bot posted in are public (%d channel(s) taken as public now); give "
                "the gallery the bot's token to hide private channels", count)


def ingest_for(gallery: Gallery, conn: redis.Redis, outage_patience_s: float = OUTAGE_PATIENCE_S,
               where: str = "") -> Ingest:
    """The ingest loop of this site: what it stores clears the site's cached pages; a channel it meets for the
    first time is asked of Discord (with the bot's token)."""
    access = gallery.access
    return Ingest(gallery.engine, gallery.store, conn, changed=gallery.pages.clear,
                  outage_patience_s=outage_patience_s, where=where,
                  new_channel=access.new_channel if access.api is not None else None)


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
    if gallery.access.api is not None:
        threading.Thread(target=gallery.access.run, args=(stopping,), name="gallery-permissions",
                         daemon=True).start()
    log.info("gallery on http://%s:%d (public address %s)", settings.gallery.host, settings.gallery.port,
             settings.gallery.public_url)
    server = _Server(server_config(app, settings.gallery.host, settings.gallery.port))
    try:
        server.run()
    finally:
        stopping.set()
        ingest.join(timeout=30)
        conn.close()
