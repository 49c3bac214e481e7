"""The gallery under test: settings, images handed over as the bot hands them, a signed-in browser-less client."""

from __future__ import annotations

import contextlib
import io
import re
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ponybot import keys
from ponybot.gallery_messages import GalleryControl, GalleryImage, GalleryMessage, GalleryPost
from ponybot.parameters import format_parameters
from ponybot.schemas import GenerationRequest, Job, Origin, Sampler
from ponybot.settings import Settings, load_settings
from tests.discord_fake.oauth import BOT_TOKEN, OAuthFake

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/"
#: Signs the test sites' cookies (gallery.session_secret takes 32 bytes or more).
SESSION_SECRET = "test-session-secret-of-at-least-32-bytes"


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A database named for this test run, created on the local PostgreSQL and dropped afterwards."""
    import sqlalchemy
    from sqlalchemy.exc import OperationalError

    admin = sqlalchemy.create_engine(POSTGRES + "test", isolation_level="AUTOCOMMIT")
    name = f"ponybot_gallery_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as db:
            db.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except OperationalError as error:
        admin.dispose()
        pytest.skip(f"no PostgreSQL reachable at 127.0.0.1:5432 (db test, trust auth): {error}")
    try:
        yield POSTGRES + name
    finally:
        with admin.connect() as db:
            db.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test twice: on an SQLite file and on a fresh PostgreSQL database (skipped with a reason when none)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/gallery.db"
        return
    with postgres_database() as url:
        yield url


def gallery_settings(tmp_path: Path, *, oauth: OAuthFake | None = None, database_url: str | None = None,
                     redis_url: str | None = None, **gallery: Any) -> Settings:
    section: dict[str, Any] = {"enabled": True, "database_url": database_url or f"sqlite:///{tmp_path}/gallery.db",
                               "store_dir": str(tmp_path / "images"), "public_url": "http://testserver", **gallery}
    sections: dict[str, Any] = {"gallery": section, "redis": {"url": redis_url}}
    if oauth is not None:
        section.update(client_id=oauth.client_id, client_secret=oauth.client_secret,
                       session_secret=SESSION_SECRET, authorize_url=oauth.authorize_url)
        sections["discord"] = {"api_base": oauth.api_base, "token": BOT_TOKEN}
    return load_settings(None, **sections)


def make_png(prompt: str, seed: int, size: tuple[int, int], job: Job) -> bytes:
    colour = (seed * 53 % 256, seed * 97 % 256, seed * 31 % 256)
    image = Image.new("RGB", size, colour)
    info = PngInfo()
    info.add_text("parameters", format_parameters(job, 0, prompt, "bad anatomy", "pony-diffusion-v4", size=size))
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def hand_over(conn: redis.Redis, prompt: str, *, guild: int = 1, channel: int = 10, user: int = 100,
              mode: str = "sfw", flagged: bool = False, tags: list[str] | None = None, count: int = 1,
              size: tuple[int, int] = (64, 64), sampler: Sampler = Sampler.DDIM,
              created_at: datetime | None = None) -> Job:
    """As the bot does after posting: the PNGs under gallery keys, then one stream entry."""
    request = GenerationRequest(prompt=prompt, count=count, sampler=sampler)
    origin = Origin(guild_id=guild, channel_id=channel, channel_nsfw=mode == "nsfw", user_id=user)
    extra = {"created_at": created_at} if created_at else {}
    job = Job.create(request, origin=origin, **extra)
    images = []
    for index in range(count):
        key = keys.gallery_image(job.id, index)
        conn.set(key, make_png(prompt, job.image_seed(index), size, job), ex=3600)
        images.append(GalleryImage(index=index, seed=job.image_seed(index), key=key, width=size[0], height=size[1],
                                   flagged=flagged, tags=tags or []))
    post = GalleryPost(job=job, mode=mode, prompt=f"safe, {prompt}" if mode == "sfw" else prompt,  # type: ignore[arg-type]
                       images=images)
    conn.xadd(keys.GALLERY_STREAM, {"data": GalleryMessage(item=post).model_dump_json()})
    return job


def control(conn: redis.Redis, **fields: Any) -> None:
    conn.xadd(keys.GALLERY_STREAM, {"data": GalleryMessage(item=GalleryControl(**fields)).model_dump_json()})


def image_ids(html: str) -> list[int]:
    """The images a list page shows, in order."""
    return [int(found) for found in re.findall(r'href="/i/(\d+)"', html)]


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF token on the page"
    return found.group(1)


def sign_in(client: Any, oauth: OAuthFake, user_id: int, guilds: dict[int, bool], name: str = "member") -> str:
    """The whole OAuth2 flow: the site's /login, Discord's authorize page, the callback; returns a CSRF token."""
    oauth.sign_in_as(user_id, name, guilds)
    login = client.get("/login", follow_redirects=False)
    assert login.status_code == 303, login.text
    authorize = httpx.get(login.headers["location"], follow_redirects=False)
    assert authorize.status_code == 302, authorize.text
    callback = authorize.headers["location"]
    assert callback.startswith("http://testserver/auth/callback?"), callback
    done = client.get(callback.removeprefix("http://testserver"), follow_redirects=False)
    assert done.status_code == 303, done.text
    return csrf_of(client.get("/settings").text)
