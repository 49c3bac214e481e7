"""The gallery's storage: migrations from empty (SQLite file, PostgreSQL), the ingest loop, outages, stores."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import redis
from PIL import Image
from sqlalchemy import Engine, func, inspect, select, text

from gallery.db import downgrade, images, make_engine, upgrade
from gallery.ingest import Ingest
from gallery.queries import Filters, Viewer, list_images
from gallery.store import FolderStore, S3Store, file_names
from ponybot import keys
from tests.gallery_harness import control, hand_over

TABLES = {"guilds", "images", "users", "memberships", "likes", "reports", "alembic_version", "channels",
          "channel_access", "hides"}


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/gallery.db"
        created = make_engine(url)
        yield created
        created.dispose()
        return
    url = request.getfixturevalue("postgres_url")
    created = make_engine(url)
    yield created
    created.dispose()


def count(engine: Engine) -> int:
    with engine.connect() as db:
        return int(db.scalar(select(func.count()).select_from(images)) or 0)


def test_migrations_from_empty(engine: Engine) -> None:
    assert not inspect(engine).get_table_names()
    upgrade(engine)
    assert TABLES <= set(inspect(engine).get_table_names())
    with engine.connect() as db:
        assert db.scalar(text("SELECT version_num FROM alembic_version")) == "0003"  # the newest: permissions
    upgrade(engine)  # at start every time: nothing to do the second time
    downgrade(engine)
    assert not set(inspect(engine).get_table_names()) - {"alembic_version"}
    upgrade(engine)
    assert TABLES <= set(inspect(engine).get_table_names())


def test_ingest_keeps_png_thumbnail_and_row(engine: Engine, conn: redis.Redis, tmp_path: Path) -> None:
    upgrade(engine)
    store = FolderStore(tmp_path / "images")
    job = hand_over(conn, "twilight sparkle reading", count=2, tags=["unicorn", "book"], size=(96, 64))
    original = conn.get(keys.gallery_image(job.id, 1))
    assert Ingest(engine, store, conn).drain() == 1
    png_name, thumb_name = file_names(job.id, 1)
    assert store.get(png_name) == original  # the PNG as posted, metadata and all
    thumb = Image.open(io.BytesIO(store.get(thumb_name) or b""))
    assert thumb.format == "WEBP" and thumb.size == (96, 64)
    with engine.connect() as db:
        row = db.execute(select(images).where(images.c.job_id == job.id, images.c.idx == 1)).one()
    assert (row.user_id, row.guild_id, row.channel_id, row.mode, row.public) == (100, 1, 10, "sfw", True)
    assert row.seed == job.seed + 1 and row.model == "pony-diffusion-v4" and row.tags == "unicorn book"
    assert row.parameters.startswith("twilight sparkle reading\nNegative prompt: bad anatomy\n")
    assert f"seed:{job.seed + 1}" in row.command and "count:1" in row.command
    assert not conn.exists(keys.gallery_image(job.id, 0), keys.gallery_image(job.id, 1))  # copies dropped
    assert conn.xpending(keys.GALLERY_STREAM, keys.GALLERY_GROUP)["pending"] == 0
    with engine.connect() as db:
        page = list_images(db, Viewer(), "new", Filters(q="unicorn reading"), None, 10)
    assert {r.idx for r in page.rows} == {0, 1}


def test_redelivered_entry_is_stored_once(engine: Engine, conn: redis.Redis, tmp_path: Path) -> None:
    upgrade(engine)
    job = hand_over(conn, "rarity")
    entry = conn.xrange(keys.GALLERY_STREAM)[0][1]
    ingest = Ingest(engine, FolderStore(tmp_path / "images"), conn)
    png = conn.get(keys.gallery_image(job.id, 0))
    ingest.drain()
    assert isinstance(png, bytes)
    conn.set(keys.gallery_image(job.id, 0), png, ex=60)
    conn.xadd(keys.GALLERY_STREAM, entry)  # the same post again (a bot retrying after a crash)
    ingest.drain()
    assert count(engine) == 1


def test_database_outage_loses_nothing(conn: redis.Redis, tmp_path: Path) -> None:
    down = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/nowhere?connect_timeout=2")
    store = FolderStore(tmp_path / "images")
    job = hand_over(conn, "applejack bucking apples")
    from sqlalchemy.exc import OperationalError

    with pytest.raises(OperationalError):
        Ingest(down, store, conn).drain()
    assert conn.xpending(keys.GALLERY_STREAM, keys.GALLERY_GROUP)["pending"] == 1  # taken, not acknowledged
    assert conn.exists(keys.gallery_image(job.id, 0))
    back = make_engine(f"sqlite:///{tmp_path}/gallery.db")
    upgrade(back)
    assert Ingest(back, store, conn).drain() == 1  # the pending entry, re-read after the outage
    assert count(back) == 1
    assert conn.xpending(keys.GALLERY_STREAM, keys.GALLERY_GROUP)["pending"] == 0


def test_unreadable_entry_is_dropped_not_retried_forever(engine: Engine, conn: redis.Redis, tmp_path: Path) -> None:
    upgrade(engine)
    conn.xadd(keys.GALLERY_STREAM, {"data": b'{"item": {"kind": "nonsense"}}'})
    broken = hand_over(conn, "not a png")
    conn.set(keys.gallery_image(broken.id, 0), b"\x89PNG garbage", ex=60)
    hand_over(conn, "pinkie")
    assert Ingest(engine, FolderStore(tmp_path), conn).drain() == 3
    assert count(engine) == 1
    assert conn.xpending(keys.GALLERY_STREAM, keys.GALLERY_GROUP)["pending"] == 0


def test_controls_disable_delete_forget(engine: Engine, conn: redis.Redis, tmp_path: Path) -> None:
    upgrade(engine)
    store = FolderStore(tmp_path / "images")
    ingest = Ingest(engine, store, conn)
    kept = hand_over(conn, "fluttershy", user=100)
    deleted = hand_over(conn, "discord", user=100)
    forgotten = [hand_over(conn, "derpy", user=200), hand_over(conn, "derpy again", user=200, guild=2)]
    ingest.drain()

    def shown() -> set[str]:
        with engine.connect() as db:
            return {r.job_id for r in list_images(db, Viewer(), "new", Filters(), None, 50).rows}

    assert shown() == {kept.id, deleted.id, *(job.id for job in forgotten)}
    control(conn, kind="guild", guild_id=1, enabled=False)
    ingest.drain()
    assert shown() == {forgotten[1].id}  # only server 2's
    control(conn, kind="guild", guild_id=1, enabled=True)
    control(conn, kind="delete_job", job_id=deleted.id)
    control(conn, kind="forget_member", user_id=200)
    ingest.drain()
    assert shown() == {kept.id}
    assert count(engine) == 1
    for job in (deleted, *forgotten):
        assert store.get(file_names(job.id, 0)[0]) is None


def test_s3_store_behind_the_same_interface(engine: Engine, conn: redis.Redis) -> None:
    """S3 through boto3 against moto's in-process S3 (no network)."""
    moto = pytest.importorskip("moto")
    import boto3

    with moto.mock_aws():
        client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
        client.create_bucket(Bucket="gallery")
        store = S3Store("gallery", prefix="ponies/", client=client)
        upgrade(engine)
        job = hand_over(conn, "luna at night")
        Ingest(engine, store, conn).drain()
        png_name, thumb_name = file_names(job.id, 0)
        names = {item["Key"] for item in client.list_objects_v2(Bucket="gallery")["Contents"]}
        assert names == {f"ponies/{png_name}", f"ponies/{thumb_name}"}
        head = client.head_object(Bucket="gallery", Key=f"ponies/{thumb_name}")
        assert head["ContentType"] == "image/webp"
        assert (store.get(png_name) or b"").startswith(b"\x89PNG")
        store.delete(png_name)
        assert store.get(png_name) is None


def test_folder_store_refuses_names_outside_it(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "images")
    with pytest.raises(ValueError, match="outside the store"):
        store.put("../escape.png", b"x")
    assert not (tmp_path / "escape.png").exists()
