"""Hides that are logged and can be undone: who hid an image and when, the hidden images of the servers a
moderator moderates (``/hidden``), and undoing a hide (``POST /i/{id}/unhide``) by any of their moderators.

Moderator rights are those Discord confirmed within ``gallery.permissions_max_age_s`` (:mod:`gallery.access`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, insert, select, update
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from gallery.auth import checked_form, signed_in
from gallery.db import hides, images, users
from gallery.params import path_id
from gallery.queries import is_moderator, moderated
from gallery.site import NO_IMAGE, gallery_of, render, viewer_in

log = logging.getLogger(__name__)


def hide_image(db: Connection, image_id: int, moderator_id: int) -> None:
    """Hide the image and log who did it and when."""
    db.execute(update(images).where(images.c.id == image_id).values(hidden=True))
    db.execute(insert(hides).values(image_id=image_id, moderator_id=moderator_id, hidden_at=datetime.now(UTC)))


def unhide_image(db: Connection, image_id: int, moderator_id: int) -> bool:
    """Show the image again and log who undid the hide; False when it was not hidden."""
    if not db.execute(update(images).where(images.c.id == image_id, images.c.hidden.is_(True))
                      .values(hidden=False)).rowcount:
        return False
    db.execute(update(hides).where(hides.c.image_id == image_id, hides.c.undone_at.is_(None))
               .values(undone_by=moderator_id, undone_at=datetime.now(UTC)))
    return True


def hidden_in(db: Connection, user_id: int, fresh_since: datetime, limit: int = 200) -> list[Any]:
    """The hidden images of the servers this member moderates, newest hide first, with who hid them."""
    hider = users.alias("hider")
    query = (select(images.c.id, images.c.prompt, images.c.guild_id, hides.c.moderator_id, hides.c.hidden_at,
                    hider.c.name.label("moderator_name"))
             .join(hides, and_(hides.c.image_id == images.c.id, hides.c.undone_at.is_(None)), isouter=True)
             .join(hider, hider.c.id == hides.c.moderator_id, isouter=True)
             .where(images.c.hidden.is_(True), images.c.guild_id.in_(moderated(user_id, fresh_since)))
             .order_by(hides.c.hidden_at.desc(), images.c.id.desc()).limit(limit))
    return list(db.execute(query).all())


async def moderator_page(request: Request, template: str, what: str,
                         rows: Callable[[Connection, int, datetime], list[Any]]) -> Response:
    """A signed-in member's page of ``what`` in the servers they moderate: ``rows(db, member, fresh_since)`` in
    ``template`` as ``rows``."""
    gallery = gallery_of(request)
    user_id = signed_in(request)
    if user_id is None:
        raise HTTPException(401, f"Sign in to see the {what} of servers you moderate.")

    def load() -> list[Any]:
        with gallery.engine.connect() as db:
            return rows(db, user_id, gallery.access.since())

    return render(request, template, rows=await run_in_threadpool(load))


async def hidden_page(request: Request) -> Response:
    return await moderator_page(request, "hidden.html", "hidden images", hidden_in)


async def unhide(request: Request) -> Response:
    gallery = gallery_of(request)
    user_id, _form = await checked_form(request)
    image_id = path_id(request, "image_id", images.c.id, NO_IMAGE)

    def apply() -> None:
        with gallery.engine.begin() as db:
            guild_id = db.scalar(select(images.c.guild_id).where(images.c.id == image_id))
            if guild_id is None:
                raise HTTPException(404, NO_IMAGE)
            if not is_moderator(db, viewer_in(db, gallery, user_id), guild_id):
                raise HTTPException(403, "Only moderators of the image's server can undo a hide (as Discord "
                                         "confirmed within the last few minutes: try again shortly).")
            if not unhide_image(db, image_id, user_id):
                raise HTTPException(409, "This image is not hidden.")

    await run_in_threadpool(apply)
    gallery.pages.clear()
    log.info("image %s shown again by %s", image_id, user_id)
    return RedirectResponse("/hidden", status_code=303)


ROUTES = [
    Route("/hidden", hidden_page),
    Route("/i/{image_id:int}/unhide", unhide, methods=["POST"]),
]
