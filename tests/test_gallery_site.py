"""The gallery's site: who sees what (one test per rule), sign-in through Discord's OAuth2 on loopback,
likes, delete, hide, reports, search, filters, pagination, and bad input answered with a clear 4xx."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import itsdangerous
import pytest
import redis
from sqlalchemy import select, update
from starlette.testclient import TestClient

from gallery.db import images, likes
from gallery.ingest import Ingest
from gallery.server import build_app, ingest_for
from gallery.site import Gallery
from ponybot.errors import ConfigError
from ponybot.schemas import Sampler
from tests.conftest import wait_until
from tests.discord_fake.oauth import OAuthFake
from tests.gallery_harness import SESSION_SECRET, control, gallery_settings, hand_over, image_ids, sign_in

GUILD, OTHER = 1, 2


@dataclass
class Site:
    app: Any
    gallery: Gallery
    ingest: Ingest
    oauth: OAuthFake
    conn: redis.Redis

    def client(self) -> TestClient:
        return TestClient(self.app)

    def add(self, prompt: str, **options: Any) -> int:
        """Hand an image over and store it; returns its id."""
        job = hand_over(self.conn, prompt, **options)
        self.ingest.drain()
        with self.gallery.engine.connect() as db:
            return int(db.scalar(select(images.c.id).where(images.c.job_id == job.id, images.c.idx == 0)) or 0)

    def row(self, image_id: int) -> Any:
        with self.gallery.engine.connect() as db:
            return db.execute(select(images).where(images.c.id == image_id)).first()


def make_site(tmp_path: Path, conn: redis.Redis, oauth: OAuthFake, **gallery: Any) -> Site:
    app = build_app(gallery_settings(tmp_path, oauth=oauth, **gallery), conn=conn)  # rate limits in Redis
    state: Gallery = app.state.gallery
    return Site(app, state, ingest_for(state, conn), oauth, conn)


@pytest.fixture
def site(tmp_path: Path, conn: redis.Redis, oauth_fake: OAuthFake) -> Iterator[Site]:
    made = make_site(tmp_path, conn, oauth_fake, page_size=3)
    yield made
    made.gallery.engine.dispose()


def visible_everywhere(client: TestClient, image_id: int, word: str) -> dict[str, bool]:
    """Whether the image shows in newest, top, search, its page and its files."""
    return {
        "newest": image_id in image_ids(client.get("/").text),
        "top": image_id in image_ids(client.get("/top?period=all").text),
        "search": image_id in image_ids(client.get("/", params={"q": word}).text),
        "page": client.get(f"/i/{image_id}").status_code == 200,
        "png": client.get(f"/file/{image_id}.png").status_code == 200,
        "thumb": client.get(f"/file/{image_id}.webp").status_code == 200,
    }


NOWHERE = dict.fromkeys(("newest", "top", "search", "page", "png", "thumb"), False)
EVERYWHERE = dict.fromkeys(NOWHERE, True)


def test_signed_out_list_pages_are_reused_for_a_moment(tmp_path: Path, conn: redis.Redis,
                                                       oauth_fake: OAuthFake) -> None:
    """Signed-out visitors share one rendering for gallery.public_cache_s; members never get it; what changes
    through the site or the ingest loop clears it, and a change behind its back lasts at most that long."""
    site = make_site(tmp_path, conn, oauth_fake, public_cache_s=1.0)
    first = site.add("first pony")
    visitor, member = site.client(), site.client()
    sign_in(member, site.oauth, 5150, {GUILD: False})
    assert image_ids(visitor.get("/").text) == [first]
    with site.gallery.engine.begin() as db:  # behind the site's back (another gallery process, say)
        db.execute(update(images).where(images.c.id == first).values(hidden=True))
    assert image_ids(visitor.get("/").text) == [first]  # the page rendered a moment ago
    assert image_ids(member.get("/").text) == []  # members' pages are never reused
    wait_until(lambda: image_ids(visitor.get("/").text) == [], what="the cached page to expire")
    second = site.add("second pony")  # the ingest loop clears the cache at once
    assert image_ids(visitor.get("/").text) == [second]
    answer = visitor.get("/")
    assert "set-cookie" not in answer.headers  # no session, no CSRF token for a visitor who only looks
    assert 'name="csrf"' in member.get("/").text  # a member's sign-out form still carries one


def test_member_page_is_titled_with_their_name(site: Site) -> None:
    image = site.add("named pony", user=4242)
    unnamed = site.client().get("/u/4242").text  # the member never signed in: no name known
    assert "Images by member 4242" in unnamed and image in image_ids(unnamed)
    sign_in(site.client(), site.oauth, 4242, {GUILD: False}, name="Starlight")
    named = site.client().get("/u/4242").text
    assert "Images by Starlight" in named and image in image_ids(named)


def test_signed_out_sees_only_sfw_unflagged(site: Site) -> None:
    sfw = site.add("sunny meadow", mode="sfw")
    nsfw = site.add("sultry meadow", mode="nsfw")
    flagged = site.add("flagged meadow", mode="nsfw", flagged=True)
    client = site.client()
    assert visible_everywhere(client, sfw, "sunny") == EVERYWHERE
    assert visible_everywhere(client, nsfw, "sultry") == NOWHERE
    assert visible_everywhere(client, flagged, "flagged") == NOWHERE


def test_flagged_image_from_sfw_mode_is_never_public(site: Site) -> None:
    flagged = site.add("odd meadow", mode="sfw", flagged=True)
    assert visible_everywhere(site.client(), flagged, "odd") == NOWHERE


def test_servers_without_the_gallery_appear_nowhere(site: Site) -> None:
    image = site.add("quiet lake", guild=GUILD)
    client = site.client()
    assert visible_everywhere(client, image, "lake") == EVERYWHERE
    control(site.conn, kind="guild", guild_id=GUILD, enabled=False)
    site.ingest.drain()
    assert visible_everywhere(client, image, "lake") == NOWHERE


def test_nsfw_needs_membership_and_opt_in(site: Site) -> None:
    mine = site.add("moonlit tower", guild=GUILD, mode="nsfw")
    theirs = site.add("moonlit castle", guild=OTHER, mode="nsfw")
    client = site.client()
    csrf = sign_in(client, site.oauth, 500, {GUILD: False})
    # signed in but not opted in: like signed out
    assert visible_everywhere(client, mine, "moonlit") == NOWHERE
    saved = client.post("/settings", data={"csrf": csrf, "nsfw": "on"}, follow_redirects=False)
    assert saved.status_code == 303
    assert visible_everywhere(client, mine, "moonlit") == EVERYWHERE
    # never another server's
    assert visible_everywhere(client, theirs, "moonlit") == NOWHERE
    client.post("/settings", data={"csrf": csrf}, follow_redirects=False)  # opting out again
    assert visible_everywhere(client, mine, "moonlit") == NOWHERE


def test_hidden_by_a_moderator_is_gone_everywhere(site: Site) -> None:
    image = site.add("stormy sea", guild=GUILD)
    member = site.client()
    csrf = sign_in(member, site.oauth, 501, {GUILD: False})
    refused = member.post(f"/i/{image}/hide", data={"csrf": csrf})
    assert refused.status_code == 403 and "moderators" in refused.text
    assert site.row(image).hidden is False
    moderator = site.client()
    csrf = sign_in(moderator, site.oauth, 502, {GUILD: True}, name="mod")
    assert 'id="hide"' in moderator.get(f"/i/{image}").text
    assert moderator.post(f"/i/{image}/hide", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    for client in (site.client(), member, moderator):
        assert visible_everywhere(client, image, "stormy") == NOWHERE


def test_only_the_member_who_made_it_deletes_it(site: Site) -> None:
    image = site.add("starry sky", user=600)
    other = site.client()
    csrf = sign_in(other, site.oauth, 601, {GUILD: True})
    assert 'id="delete"' not in other.get(f"/i/{image}").text
    assert other.post(f"/i/{image}/delete", data={"csrf": csrf}).status_code == 403
    assert site.row(image) is not None
    owner = site.client()
    csrf = sign_in(owner, site.oauth, 600, {GUILD: False})
    assert owner.post(f"/i/{image}/delete", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    assert site.row(image) is None
    assert visible_everywhere(owner, image, "starry") == NOWHERE


def test_sign_in_end_to_end_against_discord_fake(site: Site) -> None:
    client = site.client()
    sign_in(client, site.oauth, 700, {GUILD: True, OTHER: False}, name="Twilight")
    page = client.get("/").text
    assert "Twilight" in page and "Sign out" in page
    assert site.oauth.requests[-3:] == ["POST /api/v10/oauth2/token", "GET /api/v10/users/@me",
                                        "GET /api/v10/users/@me/guilds"]
    assert SESSION_SECRET not in page and site.oauth.client_secret not in page
    cookie = client.cookies.get("ponybot_gallery") or ""
    session = json.loads(base64.b64decode(cookie.split(".")[0]))  # signed, not encrypted: so it holds no secret
    assert set(session) == {"user_id", "name", "csrf", "epoch"} and session["user_id"] == 700
    assert not any(token in cookie for token in site.oauth.tokens)
    set_cookie = client.get("/login", follow_redirects=False).headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=lax" in set_cookie
    assert "secure" not in set_cookie  # plain http here; https public_url adds it


def test_sign_in_with_a_forged_state_is_refused(site: Site) -> None:
    client = site.client()
    client.get("/login", follow_redirects=False)
    answer = client.get("/auth/callback", params={"code": "x", "state": "forged"})
    assert answer.status_code == 400 and "not valid" in answer.text
    assert "Sign out" not in client.get("/").text


def test_likes_order_top_and_are_rate_limited(tmp_path: Path, conn: redis.Redis, oauth_fake: OAuthFake) -> None:
    site = make_site(tmp_path, conn, oauth_fake, likes_per_minute=2)
    first, second, third = (site.add(f"pony {n}") for n in range(3))
    for user in (801, 802):
        client = site.client()
        csrf = sign_in(client, site.oauth, user, {GUILD: False})
        for image in (second, third) if user == 801 else (second,):
            assert client.post(f"/i/{image}/like", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    assert image_ids(site.client().get("/top?period=all").text) == [second, third, first]
    assert image_ids(site.client().get("/").text) == [third, second, first]
    client = site.client()
    csrf = sign_in(client, site.oauth, 803, {GUILD: False})
    assert client.post(f"/i/{first}/like", data={"csrf": csrf}).status_code == 200
    assert client.post(f"/i/{first}/like", data={"csrf": csrf}).status_code == 200  # a like taken back
    limited = client.post(f"/i/{first}/like", data={"csrf": csrf})
    assert limited.status_code == 429 and "Too many likes" in limited.text
    assert site.row(first).likes == 0


def test_rate_limits_are_shared_by_every_gallery_process(tmp_path: Path, conn: redis.Redis,
                                                        oauth_fake: OAuthFake) -> None:
    """Two gallery processes behind one address (two apps on one Redis): a member's likes count on both."""
    site = make_site(tmp_path / "one", conn, oauth_fake, likes_per_minute=2)
    other = build_app(gallery_settings(tmp_path / "one", oauth=oauth_fake, likes_per_minute=2), conn=conn)
    image = site.add("shared pony")
    client = site.client()
    csrf = sign_in(client, site.oauth, 901, {GUILD: False})
    assert client.post(f"/i/{image}/like", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    second = TestClient(other)
    second.cookies = client.cookies  # the same member, sent to the other process
    assert second.post(f"/i/{image}/like", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    limited = client.post(f"/i/{image}/like", data={"csrf": csrf})
    assert limited.status_code == 429 and "Too many likes" in limited.text
    assert conn.exists("ponybot:gallery:limit:like:901")
    other.state.gallery.engine.dispose()


def test_rate_limits_hold_in_process_while_redis_is_away(tmp_path: Path, conn: redis.Redis, oauth_fake: OAuthFake,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    site = make_site(tmp_path, conn, oauth_fake, likes_per_minute=1)
    image = site.add("lonely pony")
    away = redis.Redis(port=1, socket_connect_timeout=1)  # nothing listens on port 1
    app = build_app(gallery_settings(tmp_path, oauth=oauth_fake, likes_per_minute=1), conn=away)
    client = TestClient(app)
    csrf = sign_in(client, site.oauth, 902, {GUILD: False})
    assert client.post(f"/i/{image}/like", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    limited = client.post(f"/i/{image}/like", data={"csrf": csrf})
    assert limited.status_code == 429 and "Too many likes" in limited.text
    assert "rate limits held in this process while Redis is unreachable" in caplog.text
    app.state.gallery.engine.dispose()


def test_top_counts_only_images_of_the_period(site: Site) -> None:
    old = site.add("ancient pony", created_at=datetime.now(UTC) - timedelta(days=3))
    new = site.add("fresh pony")
    assert image_ids(site.client().get("/top?period=day").text) == [new]
    assert set(image_ids(site.client().get("/top?period=week").text)) == {old, new}


def test_keyset_pages_cover_everything_once(site: Site) -> None:
    ids = [site.add(f"page pony {n}") for n in range(7)]
    client = site.client()
    seen: list[int] = []
    url = "/"
    while url:
        page = client.get(url).text
        seen += image_ids(page)
        found = [part for part in page.split('id="next" href="')[1:]]
        url = found[0].split('"')[0].replace("&amp;", "&") if found else ""
    assert seen == sorted(ids, reverse=True)


def test_search_and_filters(site: Site) -> None:
    pegasus = site.add("rainbow dash flying", tags=["pegasus", "sky"], sampler=Sampler.EULER_A, size=(320, 256))
    unicorn = site.add("twilight sparkle", tags=["unicorn"], created_at=datetime.now(UTC) - timedelta(days=10))
    client = site.client()

    def found(**params: str) -> set[int]:
        return set(image_ids(client.get("/", params=params).text))

    assert found(q="rainbow flying") == {pegasus}
    assert found(q="unicorn") == {unicorn}  # a tag
    assert found(q="rainbow unicorn") == set()  # every word must match
    assert found(q='"); DROP TABLE images; --') == set()
    assert found(sampler="euler_a") == {pegasus}
    assert found(size="320x256") == {pegasus}
    assert found(model="pony-diffusion-v4") == {pegasus, unicorn}
    assert found(model="other") == set()
    today = datetime.now(UTC).date()
    assert found(since=(today - timedelta(days=1)).isoformat()) == {pegasus}
    assert found(until=(today - timedelta(days=5)).isoformat()) == {unicorn}


def test_image_page_shows_every_parameter_and_how_to_reproduce(site: Site) -> None:
    image = site.add("celestia sunrise", sampler=Sampler.DPMPP_2M_KARRAS)
    row = site.row(image)
    page = site.client().get(f"/i/{image}").text
    assert f"/generate prompt:celestia sunrise seed:{row.seed} steps:25 cfg:7.5 size:512x512" in page
    assert "sampler:dpmpp_2m_karras clip_skip:2 count:1" in page
    assert "celestia sunrise\nNegative prompt: bad anatomy\nSteps: 25, Sampler: DPM++ 2M Karras" in page
    for shown in ("safe, celestia sunrise", str(row.seed), "dpmpp_2m_karras", "pony-diffusion-v4", "SFW"):
        assert shown in page


def test_reports_reach_the_servers_moderators_only(site: Site) -> None:
    image = site.add("suspicious cake")
    reporter = site.client()
    csrf = sign_in(reporter, site.oauth, 900, {GUILD: False})
    empty = reporter.post(f"/i/{image}/report", data={"csrf": csrf, "reason": ""})
    assert empty.status_code == 400
    assert reporter.post(f"/i/{image}/report", data={"csrf": csrf, "reason": "spam"},
                         follow_redirects=False).status_code == 303
    moderator = site.client()
    sign_in(moderator, site.oauth, 901, {GUILD: True})
    assert "spam" in moderator.get("/reports").text
    elsewhere = site.client()
    sign_in(elsewhere, site.oauth, 902, {OTHER: True})
    assert "spam" not in elsewhere.get("/reports").text
    assert "spam" not in reporter.get("/reports").text


# Bad input: each a clear 4xx, nothing changed.

def test_unknown_image_ids(site: Site) -> None:
    client = site.client()
    for path in ("/i/999999", "/file/999999.png", "/file/1.exe", "/j/nosuchjob", "/u/notanumber"):
        answer = client.get(path)
        assert answer.status_code == 404, path
    assert "No such image" in client.get("/i/999999").text


@pytest.mark.parametrize("cursor", ["zzz", "!!!", "MToxOjE", "LTE", "a" * 200, "OTk5OTk5OTk5OTk5OTk5OTk5OTk5"])
def test_malformed_cursors(site: Site, cursor: str) -> None:
    site.add("pony")
    for path in ("/", "/top"):
        answer = site.client().get(path, params={"cursor": cursor})
        assert answer.status_code == 400 and "malformed" in answer.text, (path, cursor)


def test_bad_filters_and_oversized_search(site: Site) -> None:
    client = site.client()
    long = client.get("/", params={"q": "pony " * 100})
    assert long.status_code == 400 and "at most 200 characters" in long.text
    assert client.get("/", params={"size": "huge"}).status_code == 400
    assert client.get("/", params={"since": "yesterday"}).status_code == 400
    assert client.get("/top", params={"period": "decade"}).status_code == 400


def test_forged_csrf_changes_nothing(site: Site) -> None:
    image = site.add("guarded pony", user=1000)
    client = site.client()
    sign_in(client, site.oauth, 1000, {GUILD: True})
    for path, data in ((f"/i/{image}/like", {}), (f"/i/{image}/delete", {}), (f"/i/{image}/hide", {}),
                       (f"/i/{image}/report", {"reason": "x"}), ("/settings", {"nsfw": "on"})):
        for token in ("forged", ""):
            answer = client.post(path, data={"csrf": token, **data})
            assert answer.status_code == 403 and "security token" in answer.text, path
    row = site.row(image)
    assert (row.likes, row.hidden) == (0, False)
    with site.gallery.engine.connect() as db:
        assert db.execute(select(likes)).first() is None
    assert 'id="nsfw" checked' not in client.get("/settings").text


def test_expired_or_missing_session_is_refused(site: Site) -> None:
    image = site.add("sleepy pony")
    client = site.client()
    csrf = sign_in(client, site.oauth, 1100, {GUILD: False})
    # the same session, signed as the server does but max_age + 1 minute ago
    session = {"user_id": 1100, "name": "member", "csrf": csrf, "epoch": 0}
    data = base64.b64encode(json.dumps(session).encode())

    class Then(itsdangerous.TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - site.gallery.settings.session_max_age_s - 60

    stale = Then(SESSION_SECRET).sign(data).decode()
    expired = TestClient(site.app, cookies={"ponybot_gallery": stale})
    answer = expired.post(f"/i/{image}/like", data={"csrf": csrf})
    assert answer.status_code == 401 and "expired" in answer.text
    fresh = TestClient(site.app, cookies={"ponybot_gallery": itsdangerous.TimestampSigner(
        SESSION_SECRET).sign(data).decode()})
    assert fresh.post(f"/i/{image}/like", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    assert site.row(image).likes == 1  # the fresh one counted, the expired one did not
    assert site.client().post(f"/i/{image}/like", data={"csrf": csrf}).status_code == 401  # no session at all


def test_public_only_without_an_oauth_client(tmp_path: Path, conn: redis.Redis) -> None:
    app = build_app(gallery_settings(tmp_path))
    client = TestClient(app)
    assert client.get("/login").status_code == 404
    assert "Sign in" not in client.get("/").text
    assert "set-cookie" not in client.get("/").headers
    assert client.post("/settings", data={"csrf": "x"}).status_code == 401


def test_client_id_without_secrets_fails_fast(tmp_path: Path) -> None:
    settings = gallery_settings(tmp_path, client_id=1)
    with pytest.raises(ConfigError, match=r"gallery\.client_secret and gallery\.session_secret"):
        build_app(settings)


def test_prompts_are_escaped(site: Site) -> None:
    image = site.add("<script>alert('pony')</script> cute")
    for path in ("/", f"/i/{image}", "/?q=cute"):
        page = site.client().get(path).text
        assert "<script>alert" not in page and "&lt;script&gt;alert" in page, path


def test_sign_ins_and_reports_are_rate_limited(tmp_path: Path, conn: redis.Redis, oauth_fake: OAuthFake) -> None:
    site = make_site(tmp_path, conn, oauth_fake, logins_per_minute=3, reports_per_hour=1)
    image = site.add("reported pony")
    client = site.client()
    csrf = sign_in(client, site.oauth, 1300, {GUILD: False})  # the first of three sign-ins allowed
    assert client.post(f"/i/{image}/report", data={"csrf": csrf, "reason": "one"},
                       follow_redirects=False).status_code == 303
    limited = client.post(f"/i/{image}/report", data={"csrf": csrf, "reason": "two"})
    assert limited.status_code == 429 and "Too many reports" in limited.text
    assert [client.get("/login", follow_redirects=False).status_code for _ in range(3)] == [303, 303, 429]
    moderator = site.client()
    moderator.cookies.clear()
    assert moderator.get("/login", follow_redirects=False).status_code == 429  # per address, signed in or not
    with site.gallery.engine.connect() as db:
        from gallery.db import reports

        assert [row.reason for row in db.execute(select(reports))] == ["one"]


#: (method, path, the status it answers): pages, files, redirects and errors of every kind
HEADER_CASES = [("GET", "/", 200), ("GET", "/top", 200), ("GET", "/i/{image}", 200), ("GET", "/file/{image}.png", 200),
                ("GET", "/file/{image}.webp", 200), ("GET", "/static/site.css", 200), ("GET", "/u/100", 200),
                ("GET", "/healthz", 200), ("GET", "/login", 303), ("GET", "/i/999999", 404),
                ("GET", "/nowhere", 404), ("GET", "/", 400), ("POST", "/i/{image}/like", 401),
                ("POST", "/healthz", 405), ("GET", "/boom", 500)]


@pytest.mark.parametrize(("method", "path", "status"), HEADER_CASES, ids=[f"{m} {p} {s}" for m, p, s in HEADER_CASES])
def test_every_answer_carries_the_security_headers(site: Site, method: str, path: str, status: int) -> None:
    """CSP (this origin only, no framing), nosniff and a Referrer-Policy on every answer, errors and files too;
    an unexpected error is a plain 500 that shows the visitor no exception text."""
    async def boom(request: Any) -> Any:
        raise RuntimeError("secret internals")

    site.app.add_route("/boom", boom)
    image = site.add("headed pony")
    client = TestClient(site.app, raise_server_exceptions=False)
    answer = client.request(method, path.format(image=image), params={"until": "9999-12-31"} if status == 400 else {},
                            follow_redirects=False)
    assert answer.status_code == status, answer.text
    policy = answer.headers.get("content-security-policy", "")
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy, policy
    assert "unsafe-inline" not in policy
    assert answer.headers.get("x-content-type-options") == "nosniff"
    assert answer.headers.get("referrer-policy") in ("same-origin", "strict-origin-when-cross-origin")
    assert "secret internals" not in answer.text and "Traceback" not in answer.text


def test_pages_have_no_inline_styles_or_scripts(site: Site) -> None:
    """What the CSP would block: inline <style>, style="..." and <script> without a src."""
    image = site.add("styled pony")
    client = site.client()
    sign_in(client, site.oauth, 100, {GUILD: True})
    for path in ("/", "/top", f"/i/{image}", "/settings", "/reports", "/i/999999"):
        page = client.get(path).text
        assert not re.search(r"<style|\sstyle=|<script(?![^>]*\ssrc=)|\son[a-z]+=", page), path
