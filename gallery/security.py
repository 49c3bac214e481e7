"""The security headers every answer of the gallery carries: pages, files, redirects and errors alike.

The pages need nothing inline: styles come from ``/static/site.css``, and there are no scripts at all, so the
policy allows only this origin and forbids framing (clickjacking) and MIME sniffing.

``Cache-Control`` too: an answer that sets a cookie, or to a request that carries one (a signed-in member's
pages, an NSFW image), is ``private, no-store`` (no shared cache keeps it, no browser keeps it past sign-out);
a route may say more itself (a public SFW file: ``public``), never on an answer that sets a cookie; every other
answer is ``no-cache`` (kept, but asked again each time).

The trailing-slash redirect is built from ``gallery.public_url``, never from the request's ``Host`` header.
"""

from __future__ import annotations

from urllib.parse import quote

from starlette.responses import RedirectResponse
from starlette.routing import Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                           "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  #: for browsers that predate frame-ancestors
    "Referrer-Policy": "same-origin",
}
RAW_HEADERS = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in HEADERS.items()]
#: What a personal answer may be kept as (nowhere), and any other answer that says nothing itself.
PRIVATE, REVALIDATE = "private, no-store", "no-cache"


def cache_control(scope: Scope, headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The ``Cache-Control`` value this answer must carry, or None to keep the one its route set."""
    names = {name.lower() for name, _ in headers}
    if b"set-cookie" in names:
        return PRIVATE.encode()
    if b"cache-control" in names:
        return None
    personal = scope.get("session") or any(name == b"cookie" for name, _ in scope.get("headers", []))
    return (PRIVATE if personal else REVALIDATE).encode()


class SecurityHeaders:
    """ASGI middleware adding :data:`HEADERS` to every HTTP response that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                caching = cache_control(scope, headers)
                if caching is not None:
                    headers = [(name, value) for name, value in headers if name.lower() != b"cache-control"]
                    headers.append((b"cache-control", caching))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in RAW_HEADERS if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class SlashRedirect:
    """The router's answer for a path it does not know: a redirect to the same path with or without its
    trailing slash when that one exists (as Starlette's own), at ``public_url``; else the router's 404."""

    def __init__(self, router: Router, public_url: str) -> None:
        self.router = router
        self.base = public_url.rstrip("/")
        router.redirect_slashes = False  # Starlette's builds its Location from the Host header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "/")
        if scope["type"] == "http" and path != "/":
            other = {**scope, "path": path.rstrip("/") if path.endswith("/") else path + "/"}
            if other["path"] and any(route.matches(other)[0] is not Match.NONE for route in self.router.routes):
                query = scope.get("query_string", b"").decode("latin-1")
                location = self.base + quote(other["path"]) + (f"?{query}" if query else "")
                await RedirectResponse(location, status_code=307)(scope, receive, send)
                return
        await self.router.not_found(scope, receive, send)
