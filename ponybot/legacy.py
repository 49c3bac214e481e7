"""What earlier versions left in Redis, moved to where this version looks for it.

Versions before every model had its own ``ponybot-generate:<model>`` queue put the default model's jobs
in ``ponybot-generate``. A worker moves any job still waiting there into its model's queue when it
starts, so an upgrade in the middle of a busy evening loses nothing.
"""

from __future__ import annotations

import logging

import redis
from rq.job import Job as RQJob
from rq.queue import Queue
from rq.serializers import JSONSerializer

from ponybot import keys
from ponybot.queue import generation_queue, job_model
from ponybot.schemas import Job

log = logging.getLogger(__name__)


def move_legacy_jobs(conn: redis.Redis) -> int:
    """Move every job waiting in the pre-multi-model queue into its model's queue; the number moved.

    Each job is taken off the old list and put on the new one in one transaction, so a crash between
    the two neither loses it nor queues it twice; running it again finds nothing to do.
    """
    legacy = Queue(keys.LEGACY_GENERATE_QUEUE, connection=conn, serializer=JSONSerializer)
    moved = 0
    for job_id in legacy.get_job_ids():
        try:
            rq_job = RQJob.fetch(job_id, connection=conn, serializer=JSONSerializer)
            model = job_model(Job.model_validate_json(rq_job.args[0]))
        except Exception as exc:  # noqa: BLE001 - a job this version cannot read stays where it is, logged
            log.warning("job=%s left in the old queue %s: %s", job_id, legacy.name, exc)
            continue
        with conn.pipeline() as pipe:
            generation_queue(conn, model).enqueue_job(rq_job, pipeline=pipe)  # opens the transaction
            pipe.lrem(legacy.key, 0, job_id)
            pipe.execute()
        moved += 1
        log.info("job=%s moved from the old queue %s to %s's", job_id, legacy.name, model)
    return moved
