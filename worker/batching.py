"""Batching: queued jobs of the leader's shape (size, steps, sampler, model, LoRA set...) claimed for one batch."""

from __future__ import annotations

import logging
import time
import zlib
from typing import Any

import redis
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.job import Job as RQJob

from ponybot import keys
from ponybot.errors import InvalidRequestError
from ponybot.networks import parse_loras
from ponybot.schemas import Job, JobKind
from ponybot.tickets import take_out
from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)

#: What reading a malformed job out of Redis raises (RQ's restore, its JSON, our schema).
UNREADABLE = (NoSuchJobError, DeserializationError, ValueError, IndexError, TypeError, KeyError, zlib.error)


class BatchClaimer:
    """Claims jobs for the worker's batches from its queues (read at each claim: ``worker.max_batch``)."""

    def __init__(self, runtime: WorkerRuntime, conn: redis.Redis, job_class: type[RQJob], serializer: Any) -> None:
        self.runtime, self.conn, self.job_class, self.serializer = runtime, conn, job_class, serializer

    def claim(self, leader: RQJob, queue: Any) -> list[tuple[RQJob, Job]]:
        """Up to ``worker.max_batch - 1`` queued jobs of the leader's shape, waiting ``batch_window_ms`` at most.

        Each is moved atomically from the queue to RQ's intermediate list, as RQ's own dequeue does:
        should this process die before the job is registered as started, RQ's maintenance finds it
        there and retries it. Each candidate is fetched once per claim, however often it is seen.
        """
        settings = self.runtime.settings.worker
        if settings.max_batch <= 1 or leader.func_name != keys.GENERATE_FUNC:
            return []
        try:
            lead = Job.model_validate_json(leader.args[0])
        except (ValueError, IndexError, TypeError):
            return []
        if lead.kind is not JobKind.TXT2IMG:
            return []
        claimed: list[tuple[RQJob, Job]] = []
        seen: dict[str, tuple[RQJob, Job] | None] = {}
        deadline = time.monotonic() + settings.batch_window_ms / 1000
        while len(claimed) < settings.max_batch - 1:
            waiting = [raw.decode() for raw in self.conn.lrange(queue.key, 0, 100)]  # type: ignore[union-attr, unused-ignore]
            fresh = [job_id for job_id in waiting if job_id not in seen]
            seen.update((job_id, self._compatible(job, lead)) for job_id, job in zip(fresh, self._fetch(fresh),
                                                                                     strict=True))
            for job_id in waiting:
                candidate = seen[job_id]
                if candidate is not None and self._claim(queue, job_id):
                    claimed.append(candidate)
                    seen[job_id] = None
                    if len(claimed) == settings.max_batch - 1:
                        break
            if len(claimed) == settings.max_batch - 1 or time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        if claimed:
            log.info("job=%s batched with %s", leader.id, ", ".join(f"job={o.id}" for o, _ in claimed))
        return claimed

    def _claim(self, queue: Any, job_id: str) -> bool:
        """Move one job from the queue to RQ's intermediate list, unless another worker took it first."""
        return take_out(self.conn, queue.name, queue.key, job_id, into=queue.intermediate_queue_key)

    def _fetch(self, job_ids: list[str]) -> list[RQJob | None]:
        """The jobs in one round trip; one by one if any is unreadable (it is then skipped, not fatal)."""
        try:
            return self.job_class.fetch_many(job_ids, connection=self.conn, serializer=self.serializer)
        except UNREADABLE:
            jobs: list[RQJob | None] = []
            for job_id in job_ids:
                try:
                    jobs.append(self.job_class.fetch(job_id, connection=self.conn, serializer=self.serializer))
                except UNREADABLE:
                    jobs.append(None)
            return jobs

    @staticmethod
    def _compatible(other: RQJob | None, lead: Job) -> tuple[RQJob, Job] | None:
        if other is None:
            return None
        try:
            if other.func_name != keys.GENERATE_FUNC:
                return None
            payload = Job.model_validate_json(other.args[0])
        except UNREADABLE:
            return None
        a, b = lead.request, payload.request
        same = (a.width, a.height, a.steps, a.sampler, a.cfg, a.clip_skip, a.speed, a.model) == (
            b.width, b.height, b.steps, b.sampler, b.cfg, b.clip_skip, b.speed, b.model)
        try:  # one model and one LoRA set per batch: the adapters are the pipeline's state
            same = same and lora_set(a.prompt) == lora_set(b.prompt)
        except InvalidRequestError:
            return None
        return (other, payload) if same and payload.kind is JobKind.TXT2IMG else None


def lora_set(prompt: str) -> tuple[tuple[str, float], ...]:
    return tuple(sorted((lora.name, lora.weight) for lora in parse_loras(prompt) if lora.weight != 0))
