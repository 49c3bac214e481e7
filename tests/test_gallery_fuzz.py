"""Every route of the gallery, enumerated from the Starlette app itself, fuzzed with hypothesis on SQLite and
PostgreSQL, signed out and signed in: whatever a visitor sends, the answer is a page or a 4xx, never a 5xx.

Each response also carries the security headers (CSP, frame-ancestors, nosniff, Referrer-Policy)."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from hypothesis import HealthCheck, given, settings, strategies as st
from starlette.routing import BaseRoute, Mount, Route
from starlette.testclient import TestClient

from gallery.server import build_app, ingest_for
from tests.discord_fake.oauth import OAuthFake
from tests.gallery_harness import gallery_settings, hand_over, postgres_database, sign_in

MEMBER, GUILD = 777, 1
#: requests per route and method, per database and sign-in state (raise it for a longer hunt)
EXAMPLES = int(os.environ.get("PONYBOT_FUZZ_EXAMPLES", "40"))
#: numbers where ids, dates and sizes have their edges: 32 and 64 bits, signed, and a little past them
EDGES = [0, 1, -1, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30, -(2**63) - 1]
QUERY_KEYS = ["until", "since", "before", "page", "q", "sort", "nsfw", "cursor", "size", "model", "sampler",
              "period", "state", "code", "reason"]

numbers = st.one_of(st.sampled_from(EDGES), st.integers(-(2**70), 2**70)).map(str)
days = st.one_of(st.sampled_from(["9999-12-31", "0001-01-01", "2024-02-30", "2024-13-01", "+10000-01-01"]),
                 st.dates().map(lambda day: day.isoformat()))
texts = st.one_of(st.text(max_size=40), st.text(alphabet=st.characters(codec="utf-8"), max_size=300),
                  st.sampled_from(["\x00", "%00", "..", "'\"", "*", "NEAR(", "x" * 5000, "512x768", "64x64"]))
values = st.one_of(numbers, days, texts)


@dataclass(frozen=True)
class Target:
    """One route and method: a path template with its parameter names."""

    method: str
    template: str
    params: tuple[str, ...]

    def url(self, path_values: dict[str, str]) -> str:
        return re.sub(r"{(\w+)(:\w+)?}", lambda found: quote(path_values[found.group(1)], safe=""), self.template)


def targets(routes: list[BaseRoute], prefix: str = "") -> Iterator[Target]:
    """Every route and method of the app; a mount's own routes, or its whole subtree as one ``{path}``."""
    for route in routes:
        if isinstance(route, Route):
            for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
                yield Target(method, prefix + route.path, tuple(route.param_convertors))
        elif isinstance(route, Mount):
            inner = getattr(route.app, "routes", None)
            if inner:
                yield from targets(list(inner), prefix + route.path)
            else:
                yield Target("GET", prefix + route.path + "/{path}", ("path",))
        else:
            raise AssertionError(f"a route of a kind the fuzz does not know: {route!r}")


@dataclass
class Tally:
    requests: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    missing_headers: list[str] = field(default_factory=list)


SECURITY_HEADERS = {"content-security-policy": "default-src 'self'", "x-content-type-options": "nosniff",
                    "referrer-policy": ""}


def check_headers(headers: Any) -> str | None:
    """What a response lacks of the security headers, or None."""
    for name, needed in SECURITY_HEADERS.items():
        if needed not in headers.get(name, "\0"):
            return f"{name}: {headers.get(name)!r}"
    if "frame-ancestors 'none'" not in headers["content-security-policy"]:
        return "frame-ancestors"
    return None


def fuzz(client: TestClient, target: Target, csrf: str, tally: Tally) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(path=st.fixed_dictionaries({name: st.one_of(numbers, texts) for name in target.params}),
           query=st.dictionaries(st.sampled_from(QUERY_KEYS), values, max_size=4),
           form=st.dictionaries(st.sampled_from(["reason", "nsfw"]), values, max_size=2))
    def one(path: dict[str, str], query: dict[str, str], form: dict[str, str]) -> None:
        url = target.url(path)
        shown = f"{target.method} {url}?{query}"[:200]
        tally.requests[f"{target.method} {target.template}"] += 1
        if target.method == "POST":
            answer = client.post(url, params=query, data={"csrf": csrf, **form}, follow_redirects=False)
        else:
            answer = client.request(target.method, url, params=query, follow_redirects=False)
        if answer.status_code >= 500:
            tally.failures.append(f"{answer.status_code} {shown}")
        if (lacking := check_headers(answer.headers)) is not None:
            tally.missing_headers.append(f"{lacking} on {answer.status_code} {shown}")

    one()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/gallery.db"
    else:
        with postgres_database() as url:
            yield url


def stocked_app(tmp_path: Path, conn: redis.Redis, oauth_fake: OAuthFake, database_url: str) -> Any:
    """The site with three images by MEMBER (ids 1 to 3, so forms reach the database), limits out of the way."""
    app = build_app(gallery_settings(tmp_path, oauth=oauth_fake, database_url=database_url, likes_per_minute=10**6,
                                     reports_per_hour=10**6, logins_per_minute=10**6), conn=conn)
    for index, mode in enumerate(["sfw", "nsfw", "sfw"]):
        hand_over(conn, f"fuzzed pony {index}", user=MEMBER, guild=GUILD, mode=mode)
    ingest_for(app.state.gallery, conn).drain()
    return app


@pytest.mark.parametrize("signed", ["signed out", "signed in"])
def test_no_route_answers_5xx_to_anything(tmp_path: Path, conn: redis.Redis, oauth_fake: OAuthFake,
                                          database_url: str, signed: str) -> None:
    app = stocked_app(tmp_path, conn, oauth_fake, database_url)
    gallery = app.state.gallery
    try:
        client = TestClient(app, raise_server_exceptions=False)
        csrf = sign_in(client, oauth_fake, MEMBER, {GUILD: True}) if signed == "signed in" else "no-token"
        tally = Tally()
        found = list(targets(app.routes))
        assert {"GET /i/{image_id:int}", "POST /i/{image_id:int}/like"} <= {f"{t.method} {t.template}" for t in found}
        for target in found:
            fuzz(client, target, csrf, tally)
    finally:
        gallery.engine.dispose()
    print(f"\n{database_url.split(':')[0]}, {signed}: {sum(tally.requests.values())} requests, "
          f"{len(tally.failures)} answered >= 500")
    for route, count in sorted(tally.requests.items()):
        print(f"  {count:4d} {route}")
    assert not tally.failures, "\n".join(tally.failures[:20])
    assert not tally.missing_headers, "\n".join(tally.missing_headers[:5])


#: what each fuzz finding was, as a fixed table: (method, path, query, status, words of the answer)
EDGES_TABLE = [
    ("GET", "/i/9223372036854775808", {}, 404, "No such image"),  # past 2^63: OverflowError on SQLite
    ("GET", "/i/2147483648", {}, 404, "No such image"),  # past INTEGER on PostgreSQL
    ("GET", "/file/9223372036854775808.png", {}, 404, "No such image"),
    ("GET", "/u/18446744073709551616", {}, 404, "No such member"),
    ("GET", "/g/9223372036854775808", {}, 404, "No such server"),
    ("GET", "/top", {"until": "9999-12-31"}, 400, "until: must be a day from 0001-01-01 to 9999-12-30"),
    ("GET", "/", {"since": "+10000-01-01"}, 400, "since: must be a day"),
    ("GET", "/", {"model": "\x00"}, 400, "model: must not contain NUL"),
    ("GET", "/", {"q": "pony\x00"}, 400, "search: must not contain NUL"),
    ("GET", "/j/%00", {}, 404, "not in the gallery"),
    ("POST", "/i/9223372036854775808/like", {}, 404, "No such image"),
    ("POST", "/i/4294967296/delete", {}, 404, "No such image"),
    ("POST", "/i/1/report", {"reason": "bad\x00pony"}, 400, "reason: must not contain NUL"),
]


def test_edges_of_ids_days_and_text(tmp_path: Path, conn: redis.Redis, oauth_fake: OAuthFake,
                                    database_url: str) -> None:
    """The fuzz's findings, each kept as a fixed case on both databases: a clear 4xx, never a 500."""
    app = stocked_app(tmp_path, conn, oauth_fake, database_url)
    try:
        client = TestClient(app, raise_server_exceptions=False)
        csrf = sign_in(client, oauth_fake, MEMBER, {GUILD: True})
        wrong = []
        for method, path, query, status, words in EDGES_TABLE:
            if method == "POST":
                answer = client.post(path, data={"csrf": csrf, **query}, follow_redirects=False)
            else:
                answer = client.get(path, params=query, follow_redirects=False)
            if answer.status_code != status or words not in answer.text:
                wrong.append(f"{method} {path} {query}: {answer.status_code}, wanted {status} with {words!r}")
    finally:
        app.state.gallery.engine.dispose()
    assert not wrong, "\n".join(wrong)
