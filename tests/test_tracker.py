"""The progress tracker's bookkeeping, without Discord: what it edits and what it leaves alone."""

from __future__ import annotations

from datetime import timedelta

from bot.tracker import Tracker
from ponybot.schemas import InteractionRef, Job, build_request, utcnow
from ponybot.settings import Settings


def job_with_message(settings: Settings) -> Job:
    ref = InteractionRef(id=1, application_id=2, token="t", expires_at=utcnow() + timedelta(minutes=15),
                         message_id=3)
    return Job.create(build_request(settings.limits, prompt="pony"), interaction=ref)


async def test_a_result_posted_before_tracking_is_never_overwritten(settings: Settings) -> None:
    tracker = Tracker(bot=None)  # type: ignore[arg-type]  # bookkeeping only: no Discord, no Redis
    fast, slow = job_with_message(settings), job_with_message(settings)
    await tracker.finish(fast.id)  # the worker and delivery were quicker than queue_job()
    tracker.track(fast)
    tracker.track(slow)
    assert set(tracker.jobs) == {slow.id}
    await tracker.finish(slow.id)
    assert tracker.jobs == {}
