"""The gallery's web site: server-rendered pages (Starlette + Jinja2) that work without JavaScript.

Read pages live here; forms (likes, delete, hide, report, settings) in
:mod:`gallery.actions`, sign-in in :mod:`gallery.auth`, the application in :mod:`gallery.app`. Every page and every file
goes through :func:`gallery.queries.visible`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from sqlalchemy import Connection, Engine, select
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from gallery.access import Access
from gallery.auth import DiscordOAuth, csrf_token, opted_in, signed_in
from gallery.cache import PageCache
from gallery.db import images, users
from gallery.limits import RateLimiter
from gallery.params import parse_filters, path_id, path_text
from gallery.queries import Order, Viewer, first_of_job, get_image, is_moderator, list_images, visible
from gallery.security import PRIVATE
from gallery.store import ImageStore, file_names
from ponybot.settings import GallerySettings

log = logging.getLogger(__name__)
TEMPLATES = Path(__file__).resolve().parent / "templates"
STATIC = Path(__file__).resolve().parent / "static"
NO_IMAGE = "No such image, or it is not visible to you."


@dataclass
class Gallery:
    settings: GallerySettings
    engine: Engine
    store: ImageStore
    oauth: DiscordOAuth | None
    limiter: RateLimiter
    templates: Jinja2Templates
    pages: PageCache  #: list pages as signed-out visitors see them
    access: Access  #: what Discord says members may see and do


def templates() -> Jinja2Templates:
    """The site's templates, read once (no file check per page: they change only with a new release)."""
    return Jinja2Templates(env=jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                                                  autoescape=jinja2.select_autoescape(), auto_reload=False))


def gallery_of(request: Request) -> Gallery:
    found: Gallery = request.app.state.gallery
    return found


def viewer_in(db: Connection, gallery: Gallery, user_id: int | None) -> Viewer:
    """Who looks: signed out, or a member with their opt-in and the age their permissions may have."""
    if user_id is None:
        return Viewer()
    return Viewer(user_id, opted_in(db, user_id), gallery.access.since())


def viewer_of(request: Request) -> Viewer:
    user_id = signed_in(request)
    if user_id is None:
        return Viewer()
    gallery = gallery_of(request)
    with gallery.engine.connect() as db:
        return viewer_in(db, gallery, user_id)


def render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    gallery = gallery_of(request)
    context.update(request=request, csrf=LazyToken(request), user_id=signed_in(request),
                   user_name=request.session.get("name") if "session" in request.scope else None,
                   sign_in=gallery.oauth is not None)
    return gallery.templates.TemplateResponse(request, template, context, status_code=status)


class LazyToken:
    """The CSRF token, made only when a page shows a form that needs it: a signed-out visitor's page gets no
    session cookie (and can be cached)."""

    def __init__(self, request: Request) -> None:
        self.request = request

    def __str__(self) -> str:
        return csrf_token(self.request)


async def image_list(request: Request, order: Order, title: str | Callable[[Connection], str],
                     **fixed: Any) -> Response:
    """A list page; ``title`` may be read from the database, in the same connection, off the event loop."""
    gallery = gallery_of(request)
    cache_key = f"{request.url.path}?{request.url.query}" if signed_in(request) is None else None
    if cache_key is not None and (cached := gallery.pages.get(cache_key)) is not None:
        return HTMLResponse(cached)
    filters = parse_filters(request.query_params, gallery.settings.max_search_chars, **fixed)
    cursor = request.query_params.get("cursor") or None

    def load() -> tuple[Any, str]:
        viewer = viewer_of(request)
        with gallery.engine.connect() as db:
            page = list_images(db, viewer, order, filters, cursor, gallery.settings.page_size,
                               gallery.settings.max_search_chars, gallery.settings.search_timeout_s)
            return page, title if isinstance(title, str) else title(db)

    page, heading = await run_in_threadpool(load)
    args = {k: v for k, v in request.query_params.items() if k != "cursor" and v}
    response = render(request, "list.html", title=heading, page=page, filters=filters, order=order, args=args)
    if cache_key is not None:
        gallery.pages.put(cache_key, bytes(response.body))
    return response


async def newest(request: Request) -> Response:
    return await image_list(request, "new", "Newest")


async def top(request: Request) -> Response:
    return await image_list(request, "top", "Top")


async def member(request: Request) -> Response:
    user_id = path_id(request, "user_id", users.c.id, "No such member.")

    def title(db: Connection) -> str:
        # an account with no public image is not shown to exist (its id, its name): the 404 of an unknown id
        made_public = select(images.c.id).where(images.c.user_id == user_id, visible(Viewer())).limit(1)
        if db.scalar(made_public) is None:
            raise HTTPException(404, "No such member.")
        name = db.scalar(select(users.c.name).where(users.c.id == user_id))
        return f"Images by {name or f'member {user_id}'}"

    return await image_list(request, "new", title, user_id=user_id)


async def server(request: Request) -> Response:
    guild_id = path_id(request, "guild_id", images.c.guild_id, "No such server.")
    return await image_list(request, "new", "This server's images", guild_id=guild_id)


async def image_page(request: Request) -> Response:
    gallery = gallery_of(request)
    image_id = path_id(request, "image_id", images.c.id, NO_IMAGE)

    def load() -> tuple[Any, bool, str | None, bool]:
        viewer = viewer_of(request)
        with gallery.engine.connect() as db:
            row = get_image(db, viewer, image_id)
            moderator = row is not None and is_moderator(db, viewer, row.guild_id)
            name = db.scalar(select(users.c.name).where(users.c.id == row.user_id)) if row else None
            # a link unfurls (Discord, Twitter/X, Mastodon) only for an image anyone signed out may see: the
            # preview is fetched by the platform's crawler, signed out, and shown to whoever reads the chat
            public = row is not None and (viewer == Viewer() or get_image(db, Viewer(), image_id) is not None)
        return row, moderator, name, public

    row, moderator, name, public = await run_in_threadpool(load)
    if row is None:
        raise HTTPException(404, NO_IMAGE)
    unfurl = unfurl_tags(gallery.settings.public_url, row, name) if public else None
    return render(request, "image.html", image=row, moderator=moderator, owner=signed_in(request) == row.user_id,
                  author=name or f"member {row.user_id}", unfurl=unfurl)


def unfurl_tags(public_url: str, row: Any, author: str | None) -> dict[str, str]:
    """OpenGraph and Twitter card properties of an image page: the picture, its size, the prompt as its text."""
    base = public_url.rstrip("/")
    prompt = row.request_prompt if len(row.request_prompt) <= 200 else row.request_prompt[:197] + "..."
    return {
        "og:type": "website", "og:site_name": "ponybot gallery", "og:url": f"{base}/i/{row.id}",
        "og:title": f"Image {row.id} by {author or f'member {row.user_id}'}", "og:description": prompt,
        "og:image": f"{base}/file/{row.id}.png", "og:image:type": "image/png",
        "og:image:width": str(row.width), "og:image:height": str(row.height), "og:image:alt": prompt,
        "twitter:card": "summary_large_image", "twitter:title": f"Image {row.id}", "twitter:description": prompt,
        "twitter:image": f"{base}/file/{row.id}.png",
    }


async def job_redirect(request: Request) -> Response:
    gallery = gallery_of(request)
    missing = "This result is not in the gallery (yet, or not visible to you)."
    job_id = path_text(request, "job_id", 64, missing)

    def load() -> int | None:
        with gallery.engine.connect() as db:
            return first_of_job(db, viewer_of(request), job_id)

    image_id = await run_in_threadpool(load)
    if image_id is None:
        raise HTTPException(404, missing)
    return RedirectResponse(f"/i/{image_id}", status_code=303)


async def image_file(request: Request) -> Response:
    gallery = gallery_of(request)
    image_id, kind = path_id(request, "image_id", images.c.id, NO_IMAGE), request.path_params["kind"]
    if kind not in ("png", "webp"):
        raise HTTPException(404, "No such file.")

    def load() -> tuple[bytes, bool] | None:
        with gallery.engine.connect() as db:
            row = get_image(db, viewer_of(request), image_id)
        if row is None:
            return None
        png, thumb = file_names(row.job_id, row.idx)
        data = gallery.store.get(png if kind == "png" else thumb)
        return None if data is None else (data, bool(row.public))

    found = await run_in_threadpool(load)
    if found is None:
        raise HTTPException(404, NO_IMAGE)
    data, public = found
    # anyone may see a public SFW file: any cache may keep it; any other (NSFW, flagged) stays on no disk
    caching = "public, max-age=3600" if public else PRIVATE
    return Response(data, media_type=f"image/{kind}", headers={"Cache-Control": caching})


async def health(request: Request) -> Response:
    return Response("ok", media_type="text/plain")


PAGE_ROUTES = [
    Route("/", newest), Route("/top", top), Route("/u/{user_id:int}", member), Route("/g/{guild_id:int}", server),
    Route("/i/{image_id:int}", image_page), Route("/j/{job_id:str}", job_redirect),
    Route("/file/{image_id:int}.{kind:str}", image_file), Route("/healthz", health),
]
