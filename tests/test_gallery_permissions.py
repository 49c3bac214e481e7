"""Permissions that follow Discord, on SQLite and PostgreSQL: the permission arithmetic as a table; a member who
left a server or lost a role loses its NSFW images and moderator actions within gallery.permissions_max_age_s
(through the Discord fake's bot routes); hides logged and undone by another moderator; visibility by channel;
Discord out of reach fails closed; the migration gives existing images their channels."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr
from sqlalchemy import insert, select
from starlette.testclient import TestClient

from gallery.db import channels, hides, images, make_engine, upgrade
from gallery.permissions import (
    ADMINISTRATOR,
    MANAGE_GUILD,
    MEMBER,
    ROLE,
    VIEW_CHANNEL,
    Overwrite,
    can_view,
    is_moderator,
)
from gallery.server import build_app, ingest_for
from ponybot.errors import ConfigError
from tests.conftest import wait_until
from tests.discord_fake.oauth import BOT_TOKEN, OAuthFake
from tests.gallery_harness import database_url, gallery_settings, hand_over, sign_in

__all__ = ["database_url"]  # the fixture, used by name

G = 1  #: the server; its @everyone role has the same id
ROLE_A, ROLE_B, USER = 50, 51, 900
SEND = 1 << 11


# -- the arithmetic, as Discord documents it ----------------------------------------------------------------------
@pytest.mark.parametrize("roles, held, member, overwrites, owner, expected", [
    ({G: VIEW_CHANNEL}, [], USER, [], None, True),  # @everyone may view, no overwrite
    ({G: SEND}, [], USER, [], None, False),  # @everyone may not
    ({G: SEND, ROLE_A: VIEW_CHANNEL}, [ROLE_A], USER, [], None, True),  # a role grants it
    ({G: VIEW_CHANNEL}, [], USER, [Overwrite(G, ROLE, 0, VIEW_CHANNEL)], None, False),  # @everyone denied here
    ({G: VIEW_CHANNEL}, [ROLE_A], USER, [Overwrite(G, ROLE, 0, VIEW_CHANNEL),
                                         Overwrite(ROLE_A, ROLE, VIEW_CHANNEL, 0)], None, True),  # role allowed back
    ({G: VIEW_CHANNEL}, [ROLE_A, ROLE_B], USER, [Overwrite(ROLE_A, ROLE, 0, VIEW_CHANNEL),
                                                 Overwrite(ROLE_B, ROLE, VIEW_CHANNEL, 0)], None, True),  # allow wins
    ({G: VIEW_CHANNEL}, [ROLE_A], USER, [Overwrite(ROLE_A, ROLE, VIEW_CHANNEL, 0),
                                         Overwrite(USER, MEMBER, 0, VIEW_CHANNEL)], None, False),  # member's last
    ({G: 0}, [], USER, [Overwrite(G, ROLE, 0, VIEW_CHANNEL), Overwrite(USER, MEMBER, VIEW_CHANNEL, 0)], None, True),
    ({G: 0, ROLE_A: ADMINISTRATOR}, [ROLE_A], USER, [Overwrite(G, ROLE, 0, VIEW_CHANNEL)], None, True),  # admin
    ({G: 0}, [], USER, [Overwrite(USER, MEMBER, 0, VIEW_CHANNEL)], USER, True),  # the owner sees everything
    ({G: VIEW_CHANNEL, ROLE_A: VIEW_CHANNEL}, [ROLE_A], None, [Overwrite(G, ROLE, 0, VIEW_CHANNEL)], None, False),
    ({G: VIEW_CHANNEL}, [], USER, [Overwrite(999, ROLE, 0, VIEW_CHANNEL)], None, True),  # another role's overwrite
])
def test_can_view_follows_discord(roles: dict[int, int], held: list[int], member: int | None,
                                  overwrites: list[Overwrite], owner: int | None, expected: bool) -> None:
    assert can_view(G, owner, member, held, roles, overwrites) is expected


@pytest.mark.parametrize("roles, held, owner, expected", [
    ({G: VIEW_CHANNEL}, [], None, False), ({G: VIEW_CHANNEL, ROLE_A: MANAGE_GUILD}, [ROLE_A], None, True),
    ({G: 0, ROLE_A: ADMINISTRATOR}, [ROLE_A], None, True), ({G: 0}, [], USER, True),
    ({G: 0, ROLE_A: MANAGE_GUILD}, [], None, False), ({G: MANAGE_GUILD}, [], None, True),
])
def test_moderator_follows_discord(roles: dict[int, int], held: list[int], owner: int | None,
                                   expected: bool) -> None:
    assert is_moderator(G, owner, USER, held, roles) is expected


# -- the site against the fake ------------------------------------------------------------------------------------
@pytest.fixture
def app(tmp_path: Path, conn: redis.Redis, oauth_fake: OAuthFake, database_url: str) -> Iterator[Any]:
    """A site whose permissions may be 1 s old: a change in Discord shows at the first request after it."""
    made = build_app(gallery_settings(tmp_path, oauth=oauth_fake, database_url=database_url,
                                      permissions_max_age_s=1), conn=conn)
    yield made
    made.state.gallery.engine.dispose()


def add(app: Any, conn: redis.Redis, prompt: str, channel: int = 10, mode: str = "sfw") -> int:
    job = hand_over(conn, prompt, guild=G, channel=channel, mode=mode)
    ingest_for(app.state.gallery, conn).drain()
    with app.state.gallery.engine.connect() as db:
        return int(db.scalar(select(images.c.id).where(images.c.job_id == job.id)) or 0)


def member(app: Any, oauth: OAuthFake, user_id: int, *, moderator: bool = False, nsfw: bool = False) -> TestClient:
    client = TestClient(app)
    csrf = sign_in(client, oauth, user_id, {G: moderator}, name=f"member{user_id}")
    client.headers["x-csrf"] = csrf  # kept with the client for the tests' forms (the site reads the form field)
    if nsfw:
        saved = client.post("/settings", data={"csrf": csrf, "nsfw": "on"}, follow_redirects=False)
        assert saved.status_code == 303
    return client


def form(client: TestClient, path: str) -> int:
    return client.post(path, data={"csrf": client.headers["x-csrf"]}, follow_redirects=False).status_code


@pytest.mark.parametrize("change", ["left", "lost role"])
def test_a_moderator_removed_in_discord_loses_nsfw_and_moderation(app: Any, conn: redis.Redis,
                                                                  oauth_fake: OAuthFake, change: str) -> None:
    nsfw = add(app, conn, "moonlit tower", mode="nsfw")
    sfw = add(app, conn, "sunny field")
    client = member(app, oauth_fake, 2000, moderator=True, nsfw=True)
    page = client.get(f"/i/{nsfw}")
    assert page.status_code == 200 and 'id="hide"' in page.text

    if change == "left":
        oauth_fake.bot.leave(G, 2000)
        wait_until(lambda: client.get(f"/i/{nsfw}").status_code == 404, what="the NSFW image refused")
        assert client.get("/settings").status_code == 401, "a member who left kept their session"
        assert form(client, f"/i/{sfw}/hide") == 401
    else:
        oauth_fake.bot.set_roles(G, 2000, [])
        wait_until(lambda: 'id="hide"' not in client.get(f"/i/{sfw}").text, what="the hide button gone")
        assert form(client, f"/i/{sfw}/hide") == 403
        assert client.get(f"/i/{nsfw}").status_code == 200, "still a member: the NSFW image stays theirs"
    assert TestClient(app).get(f"/i/{sfw}").status_code == 200, "the refused hide hid the image"


def test_a_hide_is_logged_and_undone_by_another_moderator(app: Any, conn: redis.Redis,
                                                           oauth_fake: OAuthFake) -> None:
    image = add(app, conn, "quiet lake")
    first = member(app, oauth_fake, 2100, moderator=True)
    second = member(app, oauth_fake, 2101, moderator=True)
    plain = member(app, oauth_fake, 2102)
    assert form(first, f"/i/{image}/hide") == 303
    assert TestClient(app).get(f"/i/{image}").status_code == 404

    listed = second.get("/hidden").text
    assert f'id="hidden-{image}"' in listed and "member2100 (2100)" in listed, listed
    assert f'id="hidden-{image}"' not in plain.get("/hidden").text
    assert form(plain, f"/i/{image}/unhide") == 403
    forged = second.post(f"/i/{image}/unhide", data={"csrf": "forged"}, follow_redirects=False)
    assert forged.status_code == 403 and TestClient(app).get(f"/i/{image}").status_code == 404
    assert form(second, f"/i/{image}/unhide") == 303
    assert TestClient(app).get(f"/i/{image}").status_code == 200
    assert form(second, f"/i/{image}/unhide") == 409, "undoing twice"
    with app.state.gallery.engine.connect() as db:
        logged = db.execute(select(hides).where(hides.c.image_id == image)).one()
    assert (logged.moderator_id, logged.undone_by) == (2100, 2101)
    assert logged.hidden_at is not None and logged.undone_at is not None


PRIVATE, AGE_RESTRICTED, SECRET_ROLE = 20, 30, 77
PUBLIC_THREAD, PRIVATE_CHANNEL_THREAD, PRIVATE_THREAD = 110, 120, 130


def test_images_are_seen_by_who_can_open_their_channel(app: Any, conn: redis.Redis, oauth_fake: OAuthFake) -> None:
    guild = oauth_fake.bot.guild(G)
    guild.roles[SECRET_ROLE] = 0
    guild.add_channel(PRIVATE, private_to=[SECRET_ROLE])
    guild.add_channel(AGE_RESTRICTED, nsfw=True)
    guild.add_thread(PUBLIC_THREAD, 10)
    guild.add_thread(PRIVATE_CHANNEL_THREAD, PRIVATE)
    guild.add_thread(PRIVATE_THREAD, 10, private=True)
    public = add(app, conn, "open meadow")
    private = add(app, conn, "secret meadow", channel=PRIVATE)
    kept_sfw = add(app, conn, "tame meadow", channel=AGE_RESTRICTED)  # a moderator kept the channel SFW
    restricted = add(app, conn, "wild meadow", channel=AGE_RESTRICTED, mode="nsfw")
    in_thread = add(app, conn, "threaded meadow", channel=PUBLIC_THREAD)
    in_private_channel_thread = add(app, conn, "threaded secret", channel=PRIVATE_CHANNEL_THREAD)
    in_private_thread = add(app, conn, "whispered meadow", channel=PRIVATE_THREAD)
    outsider = member(app, oauth_fake, 2200, nsfw=True)
    oauth_fake.bot.set_roles(G, 2201, [SECRET_ROLE])
    insider = member(app, oauth_fake, 2201)
    adult = member(app, oauth_fake, 2202, nsfw=True)
    everyone = {public, in_thread}  # a public thread is open to whoever can open its channel
    cases = {  # who: the images they see of them all (a private thread's: nobody's, its members are not asked)
        "signed out": (TestClient(app), everyone),
        "member without the role (opted in)": (outsider, everyone | {kept_sfw, restricted}),
        "member with the role": (insider, everyone | {private, in_private_channel_thread}),
        "member opted in": (adult, everyone | {kept_sfw, restricted}),
    }
    shown = (public, private, kept_sfw, restricted, in_thread, in_private_channel_thread, in_private_thread)
    for who, (client, expected) in cases.items():
        seen = {image for image in shown if client.get(f"/i/{image}").status_code == 200}
        assert seen == expected, who
        files = {image for image in shown if client.get(f"/file/{image}.webp").status_code == 200}
        assert files == expected, f"{who}: files"
    listed = TestClient(app).get("/").text
    assert f'href="/i/{public}"' in listed and f'href="/i/{private}"' not in listed
    assert f'href="/i/{kept_sfw}"' not in listed, "an age-restricted channel's image listed signed out"


def test_discord_out_of_reach_fails_closed(app: Any, conn: redis.Redis, oauth_fake: OAuthFake,
                                          caplog: pytest.LogCaptureFixture) -> None:
    nsfw = add(app, conn, "stormy tower", mode="nsfw")
    sfw = add(app, conn, "calm field")
    client = member(app, oauth_fake, 2300, moderator=True, nsfw=True)
    assert client.get(f"/i/{nsfw}").status_code == 200
    oauth_fake.bot.down = True
    wait_until(lambda: client.get(f"/i/{nsfw}").status_code == 404, what="the NSFW image refused")
    assert form(client, f"/i/{sfw}/hide") == 403
    assert client.get(f"/i/{sfw}").status_code == 200 and TestClient(app).get(f"/i/{sfw}").status_code == 200
    assert client.get("/settings").status_code == 200, "an outage is not a lost membership"
    assert any("Discord did not answer" in record.getMessage() and record.levelname == "WARNING"
               for record in caplog.records), "the outage was not logged"
    oauth_fake.bot.down = False
    wait_until(lambda: client.get(f"/i/{nsfw}").status_code == 200, what="the NSFW image back")


def test_sign_in_needs_the_bot_token(tmp_path: Path, oauth_fake: OAuthFake) -> None:
    settings = gallery_settings(tmp_path, oauth=oauth_fake)
    settings.discord.token = None
    with pytest.raises(ConfigError, match=r"discord\.token"):
        build_app(settings)


def test_existing_images_get_their_channels(database_url: str) -> None:
    """At 0002 (before channels), images of three channels; the upgrade gives each channel a row, age-restricted
    when an NSFW image came from it, open to nobody until Discord says otherwise."""
    engine = make_engine(database_url)
    upgrade(engine, "0002")
    row = dict(job_id="j", user_id=1, guild_id=G, flagged=False, hidden=False, kind="txt2img", request_prompt="p",
               request_negative="", prompt="p", negative_prompt="", tags="", seed=1, steps=1, cfg=7.0, width=64,
               height=64, sampler="ddim", clip_skip=1, quality_tags=True, model="m", parameters="", command="",
               likes=0, created_at=datetime(2026, 1, 1, tzinfo=UTC))
    with engine.begin() as db:
        db.execute(insert(images), [{**row, "idx": 0, "channel_id": 10, "mode": "sfw", "public": True},
                                    {**row, "idx": 1, "channel_id": 30, "mode": "nsfw", "public": False},
                                    {**row, "idx": 2, "channel_id": 30, "mode": "sfw", "public": True},
                                    {**row, "idx": 3, "channel_id": 40, "mode": "sfw", "public": True}])
    upgrade(engine)
    with engine.connect() as db:
        found = {(r.id, r.nsfw, r.everyone_view) for r in db.execute(select(channels).where(channels.c.guild_id == G))}
    engine.dispose()
    assert found == {(10, False, None), (30, True, None), (40, False, None)}


@pytest.mark.parametrize("token", [False, True])
def test_a_public_only_gallery_and_the_bot_token(tmp_path: Path, conn: redis.Redis, oauth_fake: OAuthFake,
                                                 database_url: str, token: bool) -> None:
    """Public-only: without the token every channel is taken as public (and a warning says so); with it, a
    private channel's image stays hidden, a public one's is shown."""
    oauth_fake.bot.guild(G).add_channel(PRIVATE, private_to=[SECRET_ROLE])
    settings = gallery_settings(tmp_path, database_url=database_url)
    if token:
        settings.discord.api_base = oauth_fake.api_base
        settings.discord.token = SecretStr(BOT_TOKEN)
    made = build_app(settings, conn=conn)
    try:
        public, private = add(made, conn, "open field"), add(made, conn, "hidden field", channel=PRIVATE)
        client = TestClient(made)
        assert client.get(f"/i/{public}").status_code == 200
        assert client.get(f"/i/{private}").status_code == (404 if token else 200)
    finally:
        made.state.gallery.engine.dispose()


def test_a_link_unfurls_only_for_an_image_anyone_may_see(app: Any, conn: redis.Redis, oauth_fake: OAuthFake) -> None:
    """OpenGraph and Twitter card tags (the picture, its size, the prompt) on a public image's page, for anyone
    who opens it; none on a private channel's image, even for the member who may see it (the crawler that
    fetches the preview is signed out, and the preview is shown to everyone in the chat)."""
    guild = oauth_fake.bot.guild(G)
    guild.roles[SECRET_ROLE] = 0
    guild.add_channel(PRIVATE, private_to=[SECRET_ROLE])
    public = add(app, conn, "open meadow at dawn")
    private = add(app, conn, "secret meadow", channel=PRIVATE)
    oauth_fake.bot.set_roles(G, 2301, [SECRET_ROLE])
    insider = member(app, oauth_fake, 2301)
    base = app.state.gallery.settings.public_url.rstrip("/")
    for who, client in {"signed out": TestClient(app), "member with the role": insider}.items():
        page = client.get(f"/i/{public}").text
        assert f'<meta property="og:image" content="{base}/file/{public}.png">' in page, who
        assert '<meta property="og:image:width" content="' in page and "open meadow at dawn" in page, who
        assert '<meta name="twitter:card" content="summary_large_image">' in page, who
    hidden_page = insider.get(f"/i/{private}")
    assert hidden_page.status_code == 200 and "secret meadow" in hidden_page.text
    assert "og:image" not in hidden_page.text and "twitter:card" not in hidden_page.text
