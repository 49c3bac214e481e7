"""The gallery's web application: the read pages (:mod:`gallery.site`) and the forms (:mod:`gallery.actions`)
behind the security headers, the body limit and the session, with the error pages.

The routes stand in one direction: this module imports both; the forms reuse the pages' helpers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from gallery.access import MemberRefresh
from gallery.actions import ROUTES as ACTION_ROUTES
from gallery.auth import SessionCheck
from gallery.bodies import BodyLimit
from gallery.moderation import ROUTES as MODERATION_ROUTES
from gallery.proxies import ClientAddress, TrustedProxies
from gallery.queries import BadInput
from gallery.security import HEADERS, PRIVATE, SecurityHeaders, SlashRedirect
from gallery.site import PAGE_ROUTES, STATIC, Gallery, render
from ponybot.errors import SearchTooSlow


def refusal(status: int) -> Callable[[Request, Exception], Awaitable[Response]]:
    """An exception handler answering the error page with ``status`` and the exception's own message."""

    async def answer(request: Request, error: Exception) -> Response:
        return render(request, "error.html", status=status, status_code=status, message=str(error))

    return answer


async def on_http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return render(request, "error.html", status=error.status_code, status_code=error.status_code,
                  message=error.detail)


async def on_unexpected(request: Request, error: Exception) -> Response:
    """The last resort: a plain 500, no exception text for the visitor (the log has the traceback)."""
    return PlainTextResponse("500: something went wrong on our side. Try again later.", status_code=500,
                             headers={**HEADERS, "Cache-Control": PRIVATE})  # outside SecurityHeaders


def create_app(gallery: Gallery, session_secret: str | None) -> Starlette:
    routes = [*PAGE_ROUTES, *ACTION_ROUTES, *MODERATION_ROUTES,
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    # outermost first: every answer gets the security headers; the client's address is read past trusted proxies
    # before any limit counts it; a body too large is refused before its cookie is even read
    middleware = [Middleware(SecurityHeaders),
                  Middleware(ClientAddress, proxies=TrustedProxies(gallery.settings.trusted_proxies)),
                  Middleware(BodyLimit, form_bytes=gallery.settings.max_form_bytes)]
    if session_secret is not None:
        secure = urlsplit(gallery.settings.public_url).scheme.lower() == "https"
        middleware += [Middleware(SessionMiddleware, secret_key=session_secret, session_cookie="ponybot_gallery",
                                  max_age=gallery.settings.session_max_age_s, same_site="lax", https_only=secure),
                       Middleware(MemberRefresh, access=gallery.access),  # before the check: a member who
                       Middleware(SessionCheck, engine=gallery.engine)]   # left a server is signed out at once
    app = Starlette(routes=routes, middleware=middleware,
                    exception_handlers={BadInput: refusal(400), SearchTooSlow: refusal(503),
                                        HTTPException: on_http_error, Exception: on_unexpected})
    app.router.default = SlashRedirect(app.router, gallery.settings.public_url)
    app.state.gallery = gallery
    return app
