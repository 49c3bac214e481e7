"""Forms and sign-in: like, delete, hide, report, the settings and reports pages, login and logout.

Every POST needs a signed-in session and its CSRF token (:func:`gallery.auth.checked_form`);
likes, reports and logins are rate limited. A refused action changes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from gallery.auth import checked_form, end_sessions, remember_member, session_epoch
from gallery.db import images, likes, reports, users
from gallery.moderation import hide_image, moderator_page
from gallery.params import bounded_text, path_id
from gallery.proxies import limit_key
from gallery.queries import get_image, is_moderator, moderated
from gallery.site import NO_IMAGE, gallery_of, render, viewer_in, viewer_of
from gallery.store import file_names

log = logging.getLogger(__name__)
MINUTE, HOUR = 60.0, 3600.0


def back_to(image_id: int) -> RedirectResponse:
    return RedirectResponse(f"/i/{image_id}", status_code=303)


def toggle_like(db: Connection, image_id: int, user_id: int) -> bool:
    """Like, or take the like back; returns whether the member now likes it."""
    gone = db.execute(delete(likes).where(likes.c.image_id == image_id, likes.c.user_id == user_id)).rowcount
    if gone:
        db.execute(update(images).where(images.c.id == image_id).values(likes=images.c.likes - 1))
        return False
    db.execute(insert(likes).values(image_id=image_id, user_id=user_id, created_at=datetime.now(UTC)))
    db.execute(update(images).where(images.c.id == image_id).values(likes=images.c.likes + 1))
    return True


async def act(request: Request, action: str) -> Response:
    gallery = gallery_of(request)
    user_id, form = await checked_form(request)
    image_id = path_id(request, "image_id", images.c.id, NO_IMAGE)
    settings = gallery.settings
    if action == "like":
        await gallery.limiter.check(f"like:{user_id}", settings.likes_per_minute, MINUTE, "likes")
    elif action == "report":
        await gallery.limiter.check(f"report:{user_id}", settings.reports_per_hour, HOUR, "reports")
    reason = form.get("reason", "").strip()
    if action == "report" and not 1 <= len(reason) <= 500:
        raise HTTPException(400, "Say in 1 to 500 characters what is wrong with this image.")
    bounded_text(reason, "reason", 500)

    def apply() -> str | None:
        with gallery.engine.begin() as db:
            viewer = viewer_in(db, gallery, user_id)
            row = get_image(db, viewer, image_id)
            if row is None:
                raise HTTPException(404, NO_IMAGE)
            if action == "like":
                toggle_like(db, image_id, user_id)
            elif action == "report":
                db.execute(insert(reports).values(image_id=image_id, user_id=user_id, reason=reason,
                                                  created_at=datetime.now(UTC)))
            elif action == "hide":
                if not is_moderator(db, viewer, row.guild_id):
                    raise HTTPException(403, "Only moderators of the image's server can hide it (as Discord "
                                             "confirmed within the last few minutes: try again shortly).")
                hide_image(db, image_id, user_id)
            elif action == "delete":
                if row.user_id != user_id:
                    raise HTTPException(403, "Only the member who made this image can delete it.")
                db.execute(delete(images).where(images.c.id == image_id))
                return f"{row.job_id}:{row.idx}"
        return None

    removed = await run_in_threadpool(apply)
    if action != "report":  # likes reorder top pages; hidden and deleted images leave every list
        gallery.pages.clear()
    if removed:
        job_id, index = removed.rsplit(":", 1)
        for name in file_names(job_id, int(index)):
            with contextlib.suppress(FileNotFoundError):
                await run_in_threadpool(gallery.store.delete, name)
        log.info("image %s deleted by its member", image_id)
        return RedirectResponse(f"/u/{user_id}", status_code=303)
    if action in ("hide", "report"):
        log.info("image %s %s by %s", image_id, "hidden" if action == "hide" else "reported", user_id)
    return RedirectResponse("/" if action == "hide" else f"/i/{image_id}", status_code=303)


async def like(request: Request) -> Response:
    return await act(request, "like")


async def delete_image(request: Request) -> Response:
    return await act(request, "delete")


async def hide(request: Request) -> Response:
    return await act(request, "hide")


async def report(request: Request) -> Response:
    return await act(request, "report")


async def settings_page(request: Request) -> Response:
    gallery = gallery_of(request)
    if request.method == "POST":
        user_id, form = await checked_form(request)

        def save() -> None:
            with gallery.engine.begin() as db:
                db.execute(update(users).where(users.c.id == user_id).values(nsfw_opt_in=form.get("nsfw") == "on"))

        await run_in_threadpool(save)
        return RedirectResponse("/settings", status_code=303)
    viewer = viewer_of(request)
    if viewer.user_id is None:
        raise HTTPException(401, "Sign in to see your settings.")
    return render(request, "settings.html", nsfw_opt_in=viewer.nsfw_opt_in)


def reports_in(db: Connection, user_id: int, fresh_since: datetime) -> list[Any]:
    """The reports on images of the servers this member moderates (as Discord confirmed), newest first."""
    query = (select(reports.c.id, reports.c.reason, reports.c.created_at, reports.c.user_id, images.c.id.label(
        "image_id"), images.c.hidden, images.c.prompt).join(images, images.c.id == reports.c.image_id)
        .where(images.c.guild_id.in_(moderated(user_id, fresh_since))).order_by(reports.c.id.desc()).limit(200))
    return list(db.execute(query).all())


async def reports_page(request: Request) -> Response:
    return await moderator_page(request, "reports.html", "reports", reports_in)


async def login(request: Request) -> Response:
    gallery = gallery_of(request)
    if gallery.oauth is None:
        raise HTTPException(404, "This gallery is public-only: signing in is not offered.")
    # one client's attempts (its address past trusted proxies) first: refused ones do not spend everyone's
    address = limit_key(request.client.host) if request.client else "?"
    await gallery.limiter.check(f"login:{address}", gallery.settings.logins_per_minute, MINUTE, "sign-in attempts")
    await gallery.limiter.check("login-all", gallery.settings.logins_per_minute_all, MINUTE, "sign-in attempts")
    state = secrets.token_urlsafe(24)
    request.session["oauth_state"] = state
    return RedirectResponse(gallery.oauth.authorize_url(state), status_code=303)


async def callback(request: Request) -> Response:
    gallery = gallery_of(request)
    if gallery.oauth is None:
        raise HTTPException(404, "This gallery is public-only: signing in is not offered.")
    expected = request.session.pop("oauth_state", None)
    state, code = request.query_params.get("state", ""), request.query_params.get("code", "")
    # bytes: compare_digest refuses str with characters outside ASCII, which a forged link may carry
    if not expected or not secrets.compare_digest(str(expected).encode(), state.encode()) or not code:
        raise HTTPException(400, "This sign-in link is not valid or has expired: sign in again.")
    me, guilds = await gallery.oauth.sign_in(code)

    def store() -> tuple[int, str, int]:
        with gallery.engine.begin() as db:
            user_id, name = remember_member(db, me, guilds)
            return user_id, name, session_epoch(db, user_id) or 0

    def save() -> tuple[int, str, int]:
        try:
            return store()
        except IntegrityError:  # two first sign-ins of one member at once: the loser finds the row the second time
            return store()

    try:
        user_id, name, epoch = await run_in_threadpool(save)
    except (KeyError, ValueError, TypeError) as error:
        log.warning("Discord's sign-in answer could not be read: %s", error)
        raise HTTPException(502, "Discord's answer could not be read: try again later.") from None
    except IntegrityError as error:
        log.warning("sign-in could not be stored: %s", error)
        raise HTTPException(503, "Signing in did not work this time: try again.") from None
    gallery.pages.clear()  # the member's name may be new: their page's title
    request.session.clear()
    request.session.update(user_id=user_id, name=name, csrf=secrets.token_urlsafe(32), epoch=epoch)
    log.info("member %s signed in", user_id)
    return RedirectResponse("/", status_code=303)


async def logout(request: Request) -> Response:
    """Signs this member out everywhere: every session of theirs ends, not only this browser's."""
    gallery = gallery_of(request)
    user_id, _form = await checked_form(request)

    def end() -> None:
        with gallery.engine.begin() as db:
            end_sessions(db, user_id)

    await run_in_threadpool(end)
    request.session.clear()
    return RedirectResponse("/", status_code=303)


ROUTES = [
    Route("/i/{image_id:int}/like", like, methods=["POST"]),
    Route("/i/{image_id:int}/delete", delete_image, methods=["POST"]),
    Route("/i/{image_id:int}/hide", hide, methods=["POST"]),
    Route("/i/{image_id:int}/report", report, methods=["POST"]),
    Route("/settings", settings_page, methods=["GET", "POST"]),
    Route("/reports", reports_page),
    Route("/login", login),
    Route("/auth/callback", callback),
    Route("/logout", logout, methods=["POST"]),
]
