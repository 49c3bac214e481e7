"""The gallery's smaller attack findings, on SQLite and PostgreSQL: sign-in limits behind a proxy, Cache-Control
on every route, /u/ID that tells nothing, redirects never built from Host, searches with a time limit and
concurrent first sign-ins (issue 28)."""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy
import uvicorn
from sqlalchemy import func, select
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from gallery.db import images, memberships, users
from gallery.proxies import TrustedProxies, limit_key
from gallery.server import build_app, ingest_for, server_config
from ponybot.errors import ConfigError
from tests.conftest import wait_until
from tests.discord_fake.oauth import OAuthFake
from tests.gallery_harness import gallery_settings, hand_over, sign_in
from tests.test_gallery_attack import (
    GUILD,
    app as app,  # the fixtures: a site on SQLite and on PostgreSQL
    database_url as database_url,
)

PROXY = "10.0.0.5"
SIMULTANEOUS = 8  #: under the 10 sign-ins a minute one address gets


@pytest.mark.parametrize("peer, forwarded, client", [
    ("10.0.0.5", ["203.0.113.7"], "203.0.113.7"),  # one trusted proxy
    ("10.0.0.5", ["198.51.100.9, 203.0.113.7"], "203.0.113.7"),  # what the visitor wrote is left of it
    ("10.0.0.5", ["203.0.113.7, 10.1.2.3"], "203.0.113.7"),  # two trusted hops
    ("10.0.0.5", ["203.0.113.7", "10.1.2.3"], "203.0.113.7"),  # the header twice reads as one list
    ("10.0.0.5", ["10.9.9.9, 10.1.2.3"], "10.9.9.9"),  # only proxies: the leftmost
    ("10.0.0.5", [], "10.0.0.5"),  # a trusted peer that forwards nothing
    ("198.51.100.1", ["203.0.113.7"], "198.51.100.1"),  # an untrusted peer's header is ignored
    ("127.0.0.1", ["203.0.113.7"], "127.0.0.1"),  # loopback is trusted only when listed
    ("testclient", ["203.0.113.7"], "testclient"),  # not an address at all
])
def test_the_client_is_read_right_to_left_past_trusted_proxies(peer: str, forwarded: list[str], client: str) -> None:
    assert TrustedProxies(["10.0.0.0/8"]).client(peer, forwarded) == client
    assert TrustedProxies([]).client(peer, forwarded) == peer


@pytest.mark.parametrize("host, key", [("203.0.113.7", "203.0.113.7"), ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
                                       ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"), ("::ffff:203.0.113.7",
                                                                                        "203.0.113.7")])
def test_limits_count_an_ipv6_client_by_its_64(host: str, key: str) -> None:
    assert limit_key(host) == key


@pytest.mark.parametrize("entry", ["nope", "10.0.0.0/33", "2001:db8::/129", ""])
def test_a_trusted_proxy_that_is_no_address_stops_the_start(tmp_path: Path, entry: str) -> None:
    with pytest.raises(ConfigError, match=r"gallery\.trusted_proxies: .* is not an IP address or CIDR network"):
        gallery_settings(tmp_path, trusted_proxies=["10.0.0.0/8", entry])


def login_status(site: Any, peer: str, forwarded: str | None = None) -> int:
    client = TestClient(site, client=(peer, 40000))
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    return client.get("/login", headers=headers, follow_redirects=False).status_code


@pytest.fixture
def proxied(tmp_path: Path, conn: redis.Redis, oauth_fake: OAuthFake) -> Any:
    made = build_app(gallery_settings(tmp_path, oauth=oauth_fake, trusted_proxies=["10.0.0.0/8"], logins_per_minute=3,
                                      logins_per_minute_all=7), conn=conn)
    yield made
    made.state.gallery.engine.dispose()


@pytest.mark.parametrize("attacker", [
    (PROXY, "203.0.113.7"),  # through the proxy, as itself
    (PROXY, "198.51.100.{n}, 203.0.113.7"),  # through the proxy, a new forged address each time
    ("198.51.100.1", "203.0.113.{n}"),  # straight to the site, a new forged header each time
    ("127.0.0.1", "203.0.113.{n}"),  # from loopback (uvicorn's proxy_headers would have believed it)
])
def test_one_client_spends_only_its_own_sign_in_attempts(proxied: Any, attacker: tuple[str, str]) -> None:
    peer, forwarded = attacker
    statuses = [login_status(proxied, peer, forwarded.format(n=n)) for n in range(6)]
    assert statuses == [303] * 3 + [429] * 3, "the attacker dodged its limit"
    # every other visitor behind the proxy still signs in (its refused attempts spent nobody's)
    assert login_status(proxied, PROXY, "203.0.113.50") == 303
    assert login_status(proxied, PROXY, "2001:db8:7::1") == 303


def test_all_sign_ins_together_have_a_limit_no_one_client_reaches(proxied: Any) -> None:
    """3 per client, 7 for everyone: two clients at their limit leave one attempt for a third, then none."""
    for visitor in ("203.0.113.1", "203.0.113.2"):
        assert [login_status(proxied, PROXY, visitor) for _ in range(5)] == [303] * 3 + [429] * 2
    assert [login_status(proxied, PROXY, "203.0.113.3") for _ in range(2)] == [303, 429]


@pytest.mark.parametrize("trusted, forwarded, statuses", [
    ([], "203.0.113.{n}", [303] * 3 + [429] * 2),  # a forged header from loopback changes nothing
    (["127.0.0.1"], "203.0.113.{n}", [303] * 5),  # a trusted local proxy: five visitors, one attempt each
    (["127.0.0.1"], "198.51.100.{n}, 203.0.113.7", [303] * 3 + [429] * 2),  # one visitor forging the rest
])
def test_the_served_site_reads_the_client_as_configured(tmp_path: Path, conn: redis.Redis, oauth_fake: OAuthFake,
                                                       trusted: list[str], forwarded: str,
                                                       statuses: list[int]) -> None:
    """Through the uvicorn configuration ``ponybot gallery`` runs, on loopback."""
    site = build_app(gallery_settings(tmp_path, oauth=oauth_fake, trusted_proxies=trusted, logins_per_minute=3),
                     conn=conn)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(server_config(site, "127.0.0.1", port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, what="uvicorn started")
    try:
        seen = [httpx.get(f"http://127.0.0.1:{port}/login", headers={"X-Forwarded-For": forwarded.format(n=n)},
                          timeout=60).status_code for n in range(5)]
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        site.state.gallery.engine.dispose()
    assert seen == statuses


def route_paths(site: Any, values: dict[str, Any]) -> list[tuple[str, str]]:
    """(method, concrete path) for every route of the site: a new route is walked without editing this test."""
    walked = []
    for route in site.routes:
        if isinstance(route, Mount):
            walked.append(("GET", route.path + "/site.css"))
            continue
        assert isinstance(route, Route)
        path = re.sub(r"\{(\w+)(:\w+)?\}", lambda found: str(values[found.group(1)]), route.path)
        walked += [(method, path) for method in sorted(route.methods or ()) if method != "HEAD"]
    return walked


def answers(client: TestClient, walked: list[tuple[str, str]], csrf: str | None) -> dict[tuple[str, str], str]:
    """Each route's Cache-Control; ``csrf`` None: as a visitor with no cookie at all."""
    seen = {}
    for method, path in walked:
        if csrf is None:
            client.cookies.clear()
        answer = client.request(method, path, data={"csrf": csrf or ""} if method == "POST" else None,
                                follow_redirects=False)
        assert answer.status_code < 500, (method, path, answer.text)
        seen[method, path] = answer.headers.get("cache-control", "")
    return seen


def test_cache_control_is_right_on_every_route(app: Any, conn: redis.Redis, oauth_fake: OAuthFake) -> None:
    sfw = hand_over(conn, "sunny meadow", guild=GUILD, user=100)
    hand_over(conn, "night garden", guild=GUILD, user=100, mode="nsfw")
    ingest_for(app.state.gallery, conn).drain()
    with app.state.gallery.engine.connect() as db:
        ids = dict(db.execute(select(images.c.mode, images.c.id)).all())
    values = {"image_id": ids["sfw"], "user_id": 100, "guild_id": GUILD, "job_id": sfw.id, "kind": "png"}
    walked = route_paths(app, values)
    nsfw_file = ("GET", f"/file/{ids['nsfw']}.png")

    signed_out = answers(TestClient(app), [*walked, nsfw_file], None)
    public_file = ("GET", f"/file/{ids['sfw']}.png")
    assert signed_out.pop(public_file).startswith("public"), "a public SFW file may be cached by anyone"
    assert signed_out.pop(("GET", "/login")) == "private, no-store", "an answer setting a cookie is kept nowhere"
    assert {pair: value for pair, value in signed_out.items() if value != "no-cache"} == {}

    member = TestClient(app)
    csrf = sign_in(member, oauth_fake, 100, {GUILD: False})
    assert member.post("/settings", data={"csrf": csrf, "nsfw": "on"}, follow_redirects=False).status_code == 303
    assert member.get(f"/file/{ids['nsfw']}.png").status_code == 200
    walked = [pair for pair in walked if pair != ("POST", "/logout")] + [nsfw_file, ("GET", f"/i/{ids['nsfw']}")]
    signed = answers(member, walked, csrf)
    assert signed.pop(public_file).startswith("public"), "the same public file for everyone"
    assert {pair: value for pair, value in signed.items() if value != "private, no-store"} == {}


def test_a_member_page_shows_only_accounts_with_a_public_image(app: Any, conn: redis.Redis,
                                                              oauth_fake: OAuthFake) -> None:
    hand_over(conn, "public pony", guild=GUILD, user=1700)
    hand_over(conn, "private pony", guild=GUILD, user=1701, mode="nsfw")
    ingest_for(app.state.gallery, conn).drain()
    sign_in(TestClient(app), oauth_fake, 1702, {GUILD: False}, name="Secret Name")  # a row, no image
    sign_in(TestClient(app), oauth_fake, 1700, {GUILD: False}, name="Shown Name")
    visitor = TestClient(app)
    unknown = visitor.get("/u/987654321")
    assert unknown.status_code == 404
    for user in (1701, 1702):
        answer = visitor.get(f"/u/{user}")
        assert (answer.status_code, answer.text) == (unknown.status_code, unknown.text), user
    assert "Secret Name" not in visitor.get("/u/1702").text
    shown = visitor.get("/u/1700")
    assert shown.status_code == 200 and "Shown Name" in shown.text


@pytest.mark.parametrize("path, target", [("/top/", "/top"), ("/u/100/?q=pony", "/u/100?q=pony"),
                                          ("/i/5/like/", "/i/5/like")])
def test_redirects_never_come_from_the_host_header(tmp_path: Path, path: str, target: str) -> None:
    site = build_app(gallery_settings(tmp_path, public_url="https://gallery.example"))
    answer = TestClient(site, base_url="http://evil.example").get(path, follow_redirects=False)
    assert answer.status_code == 307 and answer.headers["location"] == "https://gallery.example" + target
    site.state.gallery.engine.dispose()


def test_a_search_past_its_time_limit_is_a_clear_page(tmp_path: Path, conn: redis.Redis, database_url: str) -> None:
    """SQLite: a limit no query meets (1 ns; the clock is read every 100 steps). PostgreSQL: a search held by
    a lock it cannot get, so it would never end without its limit."""
    postgres = database_url.startswith("postgresql")
    site = build_app(gallery_settings(tmp_path, database_url=database_url,
                                      search_timeout_s=0.5 if postgres else 1e-9), conn=conn)
    for n in range(12):
        hand_over(conn, f"sleepy pony number {n}", guild=GUILD)
    ingest_for(site.state.gallery, conn).drain()
    client = TestClient(site)
    holder = sqlalchemy.create_engine(database_url)
    with holder.connect() as lock:
        if postgres:
            lock.exec_driver_sql("LOCK TABLE images IN ACCESS EXCLUSIVE MODE")
        result: list[httpx.Response] = []
        thread = threading.Thread(target=lambda: result.append(client.get("/?q=sleepy+pony")), daemon=True)
        thread.start()
        thread.join(timeout=120)
        lock.rollback()
    thread.join(timeout=60)
    assert result, "the search did not end"
    assert result[0].status_code == 503 and "This search took too long" in result[0].text
    assert client.get("/").status_code == 200  # other pages, and the connection it used, are fine
    holder.dispose()
    site.state.gallery.engine.dispose()


def test_simultaneous_first_sign_ins_of_one_member_all_succeed(app: Any, oauth_fake: OAuthFake) -> None:
    clients, callbacks = [], []
    for _ in range(SIMULTANEOUS):
        client = TestClient(app)
        oauth_fake.sign_in_as(1800, "twin", {GUILD: True, 2: False})
        login = client.get("/login", follow_redirects=False)
        callbacks.append(httpx.get(login.headers["location"], follow_redirects=False).headers["location"])
        clients.append(client)
    start = threading.Barrier(len(clients))
    results: list[httpx.Response] = []

    def finish(client: TestClient, callback: str) -> None:
        start.wait(timeout=60)
        results.append(client.get(callback.removeprefix("http://testserver"), follow_redirects=False))

    threads = [threading.Thread(target=finish, args=pair) for pair in zip(clients, callbacks, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [answer.status_code for answer in results] == [303] * SIMULTANEOUS, [answer.text for answer in results]
    assert not any(re.search(r"SQL|INSERT|UniqueViolation|IntegrityError", answer.text) for answer in results)
    with app.state.gallery.engine.connect() as db:
        assert db.scalar(select(func.count()).select_from(users).where(users.c.id == 1800)) == 1
        assert db.scalar(select(func.count()).select_from(memberships).where(memberships.c.user_id == 1800)) == 2
    assert all(client.get("/settings").status_code == 200 for client in clients)
