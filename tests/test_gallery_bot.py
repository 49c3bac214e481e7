"""The bot's side of the gallery through the Discord on loopback: /gallery, the Gallery button,
the hand-over after delivery (stored by the real ingest loop), channel opt-out, Delete and forget-me."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis
from starlette.testclient import TestClient

from gallery.server import build_app, ingest_for
from ponybot import keys
from ponybot.gallery_messages import GalleryMessage, GalleryPost
from ponybot.settings import Settings
from tests.bot_harness import drain, ephemeral_reply, running_bot
from tests.discord_fake.server import MANAGE_CHANNELS, MANAGE_GUILD, MEMBER, MEMBER_PERMISSIONS, MODERATOR, FakeDiscord
from tests.gallery_harness import gallery_settings

MOD_PERMISSIONS = MEMBER_PERMISSIONS | MANAGE_CHANNELS | MANAGE_GUILD
PUBLIC = "https://gallery.example"


def with_gallery(settings: Settings, tmp_path: Path) -> Settings:
    section = gallery_settings(tmp_path, public_url=PUBLIC).gallery
    return settings.model_copy(update={"gallery": section})


def stream(conn: redis.Redis) -> list[Any]:
    return [GalleryMessage.model_validate_json(fields[b"data"]).item
            for _id, fields in conn.xrange(keys.GALLERY_STREAM)]


def link_buttons(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [b for row in message["components"] for b in row["components"] if b.get("style") == 5]


async def reply(fake: FakeDiscord, interaction: Any) -> str:
    text: str = await fake.wait_for(lambda: ephemeral_reply(fake, interaction))
    return text


async def generated(fake: FakeDiscord, interaction: Any) -> dict[str, Any]:
    return await fake.wait_for(lambda: (m := fake.original(interaction)) and m["attachments"]
                               and not m["attachments"][0]["filename"].startswith("preview") and m)


async def test_enabled_server_results_reach_the_gallery(fake: FakeDiscord, discord_settings: Settings,
                                                        redis_url: str, conn: redis.Redis, runtime: Any,
                                                        tmp_path: Path) -> None:
    settings = with_gallery(discord_settings, tmp_path)
    async with running_bot(settings, redis_url):
        refused = await fake.slash("gallery", subcommand="enable")
        assert "Manage Server" in await reply(fake, refused)
        assert not conn.sismember(keys.GALLERY_GUILDS, str(fake.guild_id))
        enabled = await fake.slash("gallery", subcommand="enable", user=MODERATOR, permissions=MOD_PERMISSIONS)
        assert "gallery is on" in await reply(fake, enabled)
        interaction = await fake.slash("generate", {"prompt": "pinkie pie, balloons", "seed": 5})
        await fake.wait_for(lambda: "Queued" in (fake.original(interaction) or {}).get("content", ""))
        await drain(runtime)
        message = await generated(fake, interaction)
        await fake.wait_for(lambda: any(isinstance(item, GalleryPost) for item in stream(conn)))
        opened = await fake.slash("gallery", subcommand="open")
        links = await reply(fake, opened)
    assert f"{PUBLIC}/g/{fake.guild_id}" in links and f"{PUBLIC}/u/{MEMBER['id']}" in links
    control, post = stream(conn)
    assert (control.kind, control.guild_id, control.enabled) == ("guild", fake.guild_id, True)
    assert isinstance(post, GalleryPost) and post.mode == "sfw" and post.prompt.startswith("safe, ")
    (button,) = link_buttons(message)
    assert button["label"] == "Gallery" and button["url"] == f"{PUBLIC}/j/{post.job.id}"
    assert 0 < conn.ttl(post.images[0].key) <= settings.gallery.handoff_ttl_s  # the gallery's own copy

    app = build_app(gallery_settings(tmp_path))  # the gallery, started after the fact: nothing lost
    state = app.state.gallery
    assert ingest_for(state, conn).drain() == 2
    client = TestClient(app)
    page = client.get(f"/j/{post.job.id}")
    assert page.status_code == 200 and "pinkie pie, balloons" in page.text
    image_id = page.url.path.rsplit("/", 1)[1]
    assert client.get(f"/file/{image_id}.png").content == fake.attachment_bytes(message)[0]
    state.engine.dispose()


async def test_opted_out_channel_delete_and_forget_me(fake: FakeDiscord, discord_settings: Settings,
                                                      redis_url: str, conn: redis.Redis, runtime: Any,
                                                      tmp_path: Path) -> None:
    settings = with_gallery(discord_settings, tmp_path)
    conn.sadd(keys.GALLERY_GUILDS, str(fake.guild_id))
    async with running_bot(settings, redis_url):
        opted = await fake.slash("policy", {"gallery": "off"}, subcommand="set", user=MODERATOR,
                                 permissions=MOD_PERMISSIONS)
        answer = await fake.wait_for(lambda: fake.original(opted))
        assert "out of the gallery" in answer["embeds"][0]["description"]
        interaction = await fake.slash("generate", {"prompt": "rarity", "seed": 6})
        await fake.wait_for(lambda: "Queued" in (fake.original(interaction) or {}).get("content", ""))
        await drain(runtime)
        message = await generated(fake, interaction)
        assert link_buttons(message) == []
        delete = next(b["custom_id"] for row in message["components"] for b in row["components"]
                      if b.get("label") == "Delete")
        await fake.click(int(message["id"]), delete)
        await fake.wait_for(lambda: stream(conn))
        forget = await fake.slash("gallery", subcommand="forget-me")
        assert "removed from the gallery" in await reply(fake, forget)
    deleted, forgotten = stream(conn)  # no post from the opted-out channel
    assert deleted.kind == "delete_job" and deleted.job_id == delete.rsplit(":", 1)[1]
    assert forgotten.kind == "forget_member" and forgotten.user_id == int(MEMBER["id"])
