"""The gallery under attack, on SQLite and PostgreSQL: bodies bounded before they are read (against a real
uvicorn on loopback), sessions the server ends, and the small holes (a forged state, a short secret, the
Secure flag, error pages that quote nothing)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import uvicorn
from sqlalchemy import select
from starlette.testclient import TestClient

from gallery.db import users
from gallery.server import build_app, ingest_for
from ponybot.errors import ConfigError
from tests.conftest import wait_until
from tests.discord_fake.oauth import OAuthFake
from tests.gallery_harness import control, database_url, gallery_settings, hand_over, sign_in

__all__ = ["database_url"]  # the fixture, used by name

GUILD = 1
FORM_BYTES = 16384


@pytest.fixture
def app(tmp_path: Path, conn: redis.Redis, oauth_fake: OAuthFake, database_url: str) -> Iterator[Any]:
    made = build_app(gallery_settings(tmp_path, oauth=oauth_fake, database_url=database_url), conn=conn)
    yield made
    made.state.gallery.engine.dispose()


def add_image(app: Any, conn: redis.Redis, prompt: str = "sleepy pony") -> int:
    job = hand_over(conn, prompt, guild=GUILD)
    ingest_for(app.state.gallery, conn).drain()
    with app.state.gallery.engine.connect() as db:
        from gallery.db import images
        return int(db.scalar(select(images.c.id).where(images.c.job_id == job.id)) or 0)


@pytest.fixture
def served(app: Any) -> Iterator[tuple[str, int]]:
    """The app on a real uvicorn on a free loopback port: bodies arrive as a network sends them."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, what="uvicorn started")
    yield "127.0.0.1", port
    server.should_exit = True
    thread.join(timeout=60)


def raw_request(address: tuple[str, int], head: str, body_chunks: int = 0, chunk: int = 1 << 20) -> tuple[str, int]:
    """Send ``head`` and then up to ``body_chunks`` chunks of a chunked body, stopping when the server answers or
    closes; returns (status line, bytes of body sent)."""
    sent = 0
    with socket.create_connection(address, timeout=120) as sock:
        sock.sendall(head.encode())
        sock.setblocking(False)
        for _ in range(body_chunks):
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break
            except BlockingIOError:
                pass
            try:
                sock.setblocking(True)
                sock.sendall(f"{chunk:x}\r\n".encode() + b"a" * chunk + b"\r\n")
                sent += chunk
            except (BrokenPipeError, ConnectionResetError):
                break
            finally:
                sock.setblocking(False)
        sock.setblocking(True)
        answer = b""
        while b"\r\n" not in answer:
            part = sock.recv(4096)
            if not part:
                break
            answer += part
    return answer.split(b"\r\n", 1)[0].decode(), sent


@pytest.mark.parametrize("path", ["/i/1/like", "/i/1/report", "/settings", "/logout"])
def test_a_declared_huge_body_is_refused_unread(served: tuple[str, int], path: str) -> None:
    status, _ = raw_request(served, f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-"
                                    "urlencoded\r\nContent-Length: 1073741824\r\n\r\n")
    assert status.startswith("HTTP/1.1 413"), status


@pytest.mark.parametrize("signed", [False, True])
def test_a_streamed_body_is_stopped_at_the_limit(app: Any, served: tuple[str, int], oauth_fake: OAuthFake,
                                                 signed: bool) -> None:
    """A chunked body (no Content-Length) is counted as it arrives and cut off past the form limit: the
    sender is answered after a few MiB at most, not after the GiB it meant to send (signed out: 401 unread)."""
    cookie = ""
    if signed:
        client = TestClient(app)
        sign_in(client, oauth_fake, 1250, {GUILD: False})
        cookie = "Cookie: " + "; ".join(f"{name}={value}" for name, value in client.cookies.items()) + "\r\n"
    head = ("POST /i/1/like HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            f"Transfer-Encoding: chunked\r\n{cookie}\r\n")
    status, sent = raw_request(served, head, body_chunks=1024)
    assert status.startswith("HTTP/1.1 413" if signed else "HTTP/1.1 401"), status
    assert sent <= 16 << 20, f"{sent >> 20} MiB were accepted before the answer"


def test_requests_without_forms_take_no_body(app: Any) -> None:
    client = TestClient(app)
    assert client.request("GET", "/", content=b"x" * 10).status_code == 413
    assert client.get("/").status_code == 200


def test_a_signed_out_form_is_refused_before_it_is_parsed(app: Any, conn: redis.Redis, oauth_fake: OAuthFake
                                                          ) -> None:
    image = add_image(app, conn)
    client = TestClient(app)
    form = {"content-type": "application/x-www-form-urlencoded"}
    many_fields = "&".join(f"f{index}=1" for index in range(500))  # under the byte limit, over the field limit
    assert client.post(f"/i/{image}/like", content=many_fields, headers=form).status_code == 401
    # signed in, the same body is a 400, a file part is no form of ours, and the right form still counts
    csrf = sign_in(client, oauth_fake, 1200, {GUILD: False})
    assert client.post(f"/i/{image}/like", content=many_fields, headers=form).status_code == 400
    assert client.post(f"/i/{image}/like", data={"csrf": csrf}, files={"f": ("a.bin", b"x" * 100)}).status_code == 400
    assert client.post(f"/i/{image}/like", data={"csrf": csrf}, follow_redirects=False).status_code == 303


def test_sign_out_ends_every_session_of_the_member(app: Any, conn: redis.Redis, oauth_fake: OAuthFake) -> None:
    image = add_image(app, conn)
    phone, laptop = TestClient(app), TestClient(app)
    phone_csrf = sign_in(phone, oauth_fake, 1300, {GUILD: False})
    laptop_csrf = sign_in(laptop, oauth_fake, 1300, {GUILD: False})
    replay = dict(phone.cookies)
    assert phone.get("/settings").status_code == 200 and laptop.get("/settings").status_code == 200

    assert phone.post("/logout", data={"csrf": phone_csrf}, follow_redirects=False).status_code == 303
    assert phone.get("/settings").status_code == 401
    assert laptop.get("/settings").status_code == 401, "the other device's session outlived sign-out"
    assert laptop.post(f"/i/{image}/like", data={"csrf": laptop_csrf}).status_code == 401
    replayed = TestClient(app, cookies=replay)
    assert replayed.get("/settings").status_code == 401, "a cookie replayed after sign-out still works"
    # signing in again works, and only the new session counts
    again = TestClient(app)
    csrf = sign_in(again, oauth_fake, 1300, {GUILD: False})
    assert again.post(f"/i/{image}/like", data={"csrf": csrf}, follow_redirects=False).status_code == 303


def test_forget_me_ends_the_members_sessions(app: Any, conn: redis.Redis, oauth_fake: OAuthFake) -> None:
    image = add_image(app, conn)
    client = TestClient(app)
    csrf = sign_in(client, oauth_fake, 1400, {GUILD: False})
    control(conn, kind="forget_member", user_id=1400)
    ingest_for(app.state.gallery, conn).drain()
    assert client.post(f"/i/{image}/like", data={"csrf": csrf}).status_code == 401
    assert client.get("/settings").status_code == 401
    with app.state.gallery.engine.connect() as db:
        assert db.execute(select(users).where(users.c.id == 1400)).first() is None, "the forgotten came back"


@pytest.mark.parametrize("state", ["%C3%A9", "%00", "x" * 5000])
def test_a_malformed_sign_in_state_is_a_400(app: Any, state: str) -> None:
    client = TestClient(app)
    assert client.get("/login", follow_redirects=False).status_code == 303
    answer = client.get(f"/auth/callback?state={state}&code=1")
    assert answer.status_code == 400 and "not valid" in answer.text


def test_a_short_session_secret_is_refused_at_start(tmp_path: Path, oauth_fake: OAuthFake) -> None:
    settings = gallery_settings(tmp_path, oauth=oauth_fake)
    settings.gallery.session_secret = type(settings.gallery.session_secret)("x")  # type: ignore[misc]
    with pytest.raises(ConfigError, match=r"gallery\.session_secret is 1 bytes.*at least 32"):
        build_app(settings)


@pytest.mark.parametrize("public_url, secure", [("https://gallery.example", True), ("HTTPS://gallery.example", True),
                                                ("http://gallery.example", False)])
def test_the_cookie_is_secure_when_the_site_is_https(tmp_path: Path, conn: redis.Redis, oauth_fake: OAuthFake,
                                                      public_url: str, secure: bool) -> None:
    app = build_app(gallery_settings(tmp_path, oauth=oauth_fake, public_url=public_url), conn=conn)
    cookie = TestClient(app, base_url=public_url.lower()).get("/login", follow_redirects=False).headers["set-cookie"]
    assert ("secure" in cookie.lower()) is secure, cookie
    app.state.gallery.engine.dispose()
