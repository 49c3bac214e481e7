"""Request bodies bounded before they are read.

The gallery's only bodies are its small url-encoded forms (a CSRF token, a checkbox, a report of at most 500
characters). Every other request takes none. :class:`BodyLimit` answers 413 from the headers alone when
``Content-Length`` says more than the route takes, and counts what a body without one (chunked) streams,
stopping it at the limit: a flood of large bodies costs the site neither memory nor temporary files.
"""

from __future__ import annotations

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Methods that carry a form here; any other request takes no body at all.
FORM_METHODS = frozenset({"POST"})


class BodyTooLarge(Exception):
    """A streamed body passed its limit (raised inside the app's ``receive``, caught by :class:`BodyLimit`)."""


def too_large(limit: int) -> PlainTextResponse:
    what = f"more than {limit} bytes" if limit else "a body"
    return PlainTextResponse(f"Request too large: this address takes {what}.", status_code=413,
                             headers={"Connection": "close"})


class BodyLimit:
    """ASGI middleware: at most ``form_bytes`` for a form (POST), nothing for every other method."""

    def __init__(self, app: ASGIApp, *, form_bytes: int) -> None:
        self.app = app
        self.form_bytes = form_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.form_bytes if scope["method"] in FORM_METHODS else 0
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await PlainTextResponse("Content-Length is not a number.", status_code=400)(scope, receive, send)
                return
            if int(declared) > limit:
                await too_large(limit)(scope, receive, send)
                return
        seen = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge:
            if started:
                raise
            await too_large(limit)(scope, receive, send)
