"""The worker loop: RQ's in-process worker around a resident pipeline, with heartbeats and batching.

One long-lived process per GPU. Jobs run in this process (RQ's SimpleWorker:
never a fork per job, since a CUDA context does not survive fork). Only the
job name :data:`ponybot.keys.GENERATE_FUNC` is accepted, mapped to the resident
pipeline; RQ callbacks are refused, so writing to Redis cannot run code here.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import redis
from rq import SimpleWorker
from rq.executions import Execution
from rq.job import Job as RQJob
from rq.registry import clean_registries as rq_clean_registries
from rq.serializers import JSONSerializer
from rq.utils import now as rq_now
from rq.worker import WorkerStatus
from rq.worker_registration import clean_worker_registry

from ponybot import keys
from ponybot.legacy import move_legacy_jobs
from ponybot.queue import generation_queue, publish_event
from ponybot.schemas import Job
from worker.announce import Announcer
from worker.batching import UNREADABLE, BatchClaimer
from worker.commands import CommandChannel
from worker.heartbeats import Heartbeats, RedisWatch
from worker.retry import with_redis_retry
from worker.rq_job import ATTEMPTS_FIELD, SafeJob, attempts_of
from worker.runtime import Batch, WorkerRuntime
from worker.speed import ALLOWANCE_S
from worker.stage import PostStage

log = logging.getLogger(__name__)

#: RQ's exception names -> the failure codes members are told about.
FAILURE_CODES = {"JobTimeoutException": "timeout", "AbandonedJobError": "worker_died"}
#: Longest a sweep holds its lock (a sweep takes milliseconds; RQ's own lock lasts 899 s).
SWEEP_LOCK_S = 60
#: The worker's exit status when post-processing hung (``ponybot up`` restarts the worker, after a back-off).
EXIT_POST_STUCK = 1


@dataclass
class InFlight:
    """A batch from its start until RQ is told each of its jobs ended."""

    queue: Any
    running: list[tuple[RQJob, Any]]  #: (RQ job, execution), the leader first
    beats: Heartbeats
    handed_over: bool = False  #: given to the post stage, which finalizes it


class GenerationWorker(SimpleWorker):
    """RQ's in-process worker bound to one runtime; JSON only, SafeJob only."""

    def __init__(self, runtime: WorkerRuntime, *, on_interrupt: Callable[[], None] | None = None,
                 **kwargs: Any) -> None:
        self._last_worker_beat = float("-inf")
        self.watch = RedisWatch(runtime.settings.worker.heartbeat_s)  # before RQ's __init__ may touch Redis
        self.on_interrupt = on_interrupt
        job_class = type("BoundSafeJob", (SafeJob,), {"handler": staticmethod(runtime.run)})
        super().__init__(
            [generation_queue(runtime.conn, model) for model in runtime.generators],
            connection=runtime.conn,
            name=runtime.name,
            job_class=job_class,
            serializer=JSONSerializer,
            exception_handlers=[self._report_failure],
            worker_ttl=max(20, runtime.settings.worker.heartbeat_s * 3),
            maintenance_interval=runtime.settings.worker.maintenance_s,
            **kwargs,
        )
        self.runtime = runtime
        self.heartbeat_s = runtime.settings.worker.heartbeat_s
        self.stage = PostStage(runtime.settings.worker.overlap_depth, on_stuck=self._post_stuck)
        self.claimer = BatchClaimer(runtime, runtime.conn, self.job_class, self.serializer)
        self._flight: InFlight | None = None
        #: the heartbeats of every batch this worker has in hand (generating, or in the post stage)
        self.beating: set[Heartbeats] = set()
        self.beating_lock = threading.Lock()
        self.commands: CommandChannel | None = None

    def subscribe(self) -> None:
        """RQ's command channel, read in short slices (:mod:`worker.commands`): RQ's own read blocks for 60 s."""
        self.commands = CommandChannel(self.connection, self.pubsub_channel_name, self)

    def unsubscribe(self) -> None:
        """Stop reading the command channel without waiting on a read (RQ's order could wait 60 s for one)."""
        if self.commands is not None:
            self.commands.stop()

    def _install_signal_handlers(self) -> None:
        """RQ's warm shutdown, unless ``on_interrupt`` is given: then SIGINT/SIGTERM call it, at once."""
        if self.on_interrupt is None:
            super()._install_signal_handlers()  # type: ignore[no-untyped-call, unused-ignore]
            return
        interrupt = self.on_interrupt
        for stop_signal in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop_signal, lambda _signum, _frame: interrupt())

    #: RQ renews the worker's own key before and after every dequeue and after every job: three
    #: round trips of three commands per job. The key lives ``worker_ttl + 60`` s, so once a second is plenty.
    WORKER_BEAT_EVERY_S: ClassVar[float] = 1.0

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """RQ's worker heartbeat, sent at most once a second outside a pipeline (job heartbeats are untouched)."""
        if pipeline is None and timeout is None:
            if time.monotonic() - self._last_worker_beat < self.WORKER_BEAT_EVERY_S:
                return
            self._last_worker_beat = time.monotonic()
        try:
            super().heartbeat(timeout, pipeline)
        except self.REDIS_AWAY as error:
            if pipeline is not None:
                raise
            self.watch.trouble()
            log.warning("worker heartbeat failed, Redis unavailable: %s", error)

    #: Redis away for a moment (a restart, a Sentinel failover): RQ's own loop quits on these outside its dequeue.
    REDIS_AWAY: ClassVar[tuple[type[Exception], ...]] = (redis.ConnectionError, redis.TimeoutError)

    def check_for_suspension(self, burst: bool) -> None:
        """RQ's, but Redis being away waits for it instead of ending the worker (the dequeue retries)."""
        try:
            super().check_for_suspension(burst)
        except self.REDIS_AWAY as error:
            self.watch.trouble()
            log.warning("Redis unavailable (%s): waiting for it", error)
            time.sleep(1)

    def run_maintenance_tasks(self) -> None:
        """RQ's, skipped (not fatal) while Redis is away."""
        try:
            super().run_maintenance_tasks()  # type: ignore[no-untyped-call, unused-ignore]
        except self.REDIS_AWAY as error:
            self.watch.trouble()
            log.warning("maintenance skipped, Redis unavailable: %s", error)

    def set_state(self, state: str, pipeline: Any = None) -> None:
        """Write the worker's state only when it changes (RQ sets ``idle`` twice between jobs). Outside a
        pipeline, Redis being away (a failover) skips it: RQ's loop would quit over an informational write."""
        if pipeline is not None:
            super().set_state(state, pipeline)
            return
        try:
            if state != self.get_state():
                super().set_state(state)
        except self.REDIS_AWAY as error:
            self.watch.trouble()
            log.warning("worker state %r not written, Redis unavailable: %s", state, error)

    @property
    def dequeue_timeout(self) -> int:
        """An idle worker wakes at least every ``maintenance_s`` to sweep (RQ waits ``worker_ttl - 15`` s)."""
        return max(1, min(self.worker_ttl - 15, self.maintenance_interval))

    def prepare_execution(self, job: RQJob) -> Execution:
        """RQ's, plus counting the attempt in the same round trip."""
        with self.connection.pipeline() as pipeline:
            execution = Execution.create(job, self.get_heartbeat_ttl(job), pipeline=pipeline, worker_name=self.name)
            self.executions[execution.id] = execution
            self.set_state(WorkerStatus.BUSY, pipeline=pipeline)
            pipeline.hincrby(job.key, ATTEMPTS_FIELD, 1)
            pipeline.execute()
        return execution

    def get_heartbeat_ttl(self, job: RQJob, working_time: float = 0.0) -> int:
        """Short: a heartbeat thread renews it, so a killed worker's job is found and retried soon."""
        return self.heartbeat_s * 3

    def execute_job(self, job: RQJob, queue: Any) -> None:
        """:meth:`run_job`; Redis going away around a job leaves it to RQ's sweep instead of ending the worker."""
        try:
            self.run_job(job, queue)
        except self.REDIS_AWAY as error:
            # not started: RQ's intermediate-list cleanup retries it; started: the sweep does, once it is abandoned
            log.error("job=%s Redis went away around the job (%s): carrying on", job.id, error)
            self.executions.clear()

    def run_job(self, job: RQJob, queue: Any) -> None:
        """RQ's SimpleWorker, plus heartbeats while the job runs (SimpleWorker sends none), batching, and overlap.

        The GPU stage runs here (``perform_job`` under the job's time limit). Once it has queued
        the batch on the GPU, the batch's post-processing and RQ's bookkeeping go to the post
        stage (:meth:`_finalize_success`) and this returns to take the next job. RQ hears that a
        job finished only after its event is published, and its heartbeats go on until then:
        a worker that dies between the stages leaves the job to be retried, as before.
        """
        execution = self.prepare_execution(job)
        claimed = self.claim_batch(job, queue)
        job.timeout = self.time_limit(job, claimed)  # this worker's own limit, whatever RQ stored
        running = [(job, execution)]
        for other, _payload in claimed:
            running.append((other, self.prepare_execution(other)))
            self.prepare_job_execution(other, remove_from_intermediate_queue=True)
        self.runtime.batched = [payload for _other, payload in claimed]
        flight = InFlight(queue, running, Heartbeats(self, running))
        self._flight = flight
        try:
            succeeded = self.perform_job(job, queue, execution)
        finally:
            self.runtime.batched = []
            self._flight = None
        if not flight.handed_over:  # the GPU stage failed: nothing for the post stage
            self.runtime.take_pending()
            flight.beats.stop()
            self._finalize_rest(flight, succeeded)
        self.set_state("idle")

    def _finalize_success(self, job: RQJob, queue: Any, execution: Any, return_value: Any) -> None:
        """The leader's GPU stage succeeded: hand its batch to the post stage, which tells RQ when done."""
        flight = self._flight
        pending = self.runtime.take_pending()
        if flight is None or flight.running[0][0] is not job:  # not a batch this worker started: finish here
            if pending is not None:
                self.runtime.finish_batch(pending)
            self._finished(job, queue, execution, return_value)
            return
        flight.handed_over = True
        self.stage.submit(lambda: self._post(flight, pending, return_value), limit_s=job.timeout,
                          what=", ".join(f"job={other.id}" for other, _execution in flight.running))

    def _post_stuck(self, what: str, elapsed: float) -> None:
        """Post-processing outlived the batch's time limit (a hung classifier): a thread cannot be stopped, so
        the worker exits; its jobs' heartbeats stop and another worker retries them (``ponybot up`` restarts it)."""
        log.critical("%s post-processing stuck for %.0f s, past the batch's time limit: exiting so that its jobs "
                     "are retried", what, elapsed)
        logging.shutdown()
        os._exit(EXIT_POST_STUCK)

    def _post(self, flight: InFlight, pending: Batch | None, return_value: Any) -> None:
        """Post-process a batch, publish its events, and only then tell RQ its jobs are finished."""
        try:
            if pending is not None:
                events = self.runtime.finish_batch(pending)
                return_value = {"events": {event.job.id: event.kind for event in events}}
        except Exception:  # noqa: BLE001 - RQ records it (and retries) as it would a failure in perform_job
            failure = sys.exc_info()
            flight.beats.stop()
            for job, execution in flight.running:
                log.error("job=%s post-processing failed: %s", job.id, failure[1])
                super()._finalize_failure(job, flight.queue, execution, failure)
            return
        flight.beats.stop()
        for job, execution in flight.running:
            self._finished(job, flight.queue, execution, return_value)

    def _finished(self, job: RQJob, queue: Any, execution: Any, return_value: Any) -> None:
        """RQ's ``_finalize_success``, retried while Redis is away (a failover): the job's event is out,
        so failing here would end this worker and leave the job to run again."""
        with_redis_retry(job.id, lambda: super(GenerationWorker, self)._finalize_success(job, queue, execution,
                                                                                       return_value))

    def _finalize_rest(self, flight: InFlight, succeeded: bool) -> None:
        """The batched jobs of a leader whose GPU stage ended without a hand-over (it failed)."""
        leader = flight.running[0][0]
        for other, other_execution in flight.running[1:]:
            if succeeded:
                self._finished(other, flight.queue, other_execution, None)
            else:
                failure = RuntimeError(f"the batch led by job {leader.id} failed")
                self._finalize_failure(other, flight.queue, other_execution, (RuntimeError, failure, None))

    def teardown(self) -> None:
        """Finish the batches still in the post stage (SIGTERM, burst end) before leaving."""
        self.stage.close()
        try:
            super().teardown()  # type: ignore[no-untyped-call, unused-ignore]
        except self.REDIS_AWAY as error:  # its record expires on its own (worker_ttl)
            log.warning("worker %s: its end not recorded, Redis unavailable: %s", self.name, error)

    def claim_batch(self, leader: RQJob, queue: Any) -> list[tuple[RQJob, Job]]:
        return self.claimer.claim(leader, queue)

    def time_limit(self, leader: RQJob, claimed: list[tuple[RQJob, Job]]) -> int:
        """Seconds the leader's batch may run on this worker (a minute for a job that cannot be read)."""
        try:
            lead = Job.model_validate_json(leader.args[0])
        except UNREADABLE:
            return int(ALLOWANCE_S)  # refused as soon as it runs
        try:
            return self.runtime.time_limit([lead, *(payload for _job, payload in claimed)])
        except Exception:  # a runtime measuring itself lazily failed: the job's own run reports why
            log.exception("job=%s could not measure this worker's speed: a limit of %d s", leader.id, ALLOWANCE_S)
            return int(ALLOWANCE_S)

    def _next_sweep_in(self) -> float:
        if self.last_cleaned_at is None:
            return 0.0
        return max(0.0, self.maintenance_interval - (rq_now() - self.last_cleaned_at).total_seconds()) + 0.01

    def clean_registries(self) -> None:
        """RQ's, but its lock lasts :data:`SWEEP_LOCK_S`, not 15 minutes: a worker killed mid-sweep (now more
        likely, since busy workers sweep too) must not stop every sweep for that long.

        This worker's own jobs are renewed first: after Redis was away for longer than their heartbeat's
        time-to-live they look abandoned, and the sweep would fail jobs that are still running here. Other
        workers' jobs get :func:`worker.heartbeats.grace_s` after the outage to be renewed (RedisWatch).
        """
        with self.beating_lock:
            in_hand = list(self.beating)
        for beats in in_hand:
            beats.renew()  # RedisError: Redis is away, no sweep now
        lapsed = sum(len(queue.started_job_registry.get_expired_job_ids()) for queue in self.queues)
        if lapsed and (reason := self.watch.unsettled(self.connection)) is not None:
            log.info("sweep for abandoned jobs waits: %d job(s) without a recent heartbeat, but %s (live workers "
                     "get %.0f s to renew their heartbeats)", lapsed, reason, self.watch.grace_s)
            self.last_cleaned_at = rq_now()  # type: ignore[assignment, unused-ignore]
            return
        for queue in self.queues:
            if self.connection.set(queue.registry_cleaning_key, self.name, nx=True, ex=SWEEP_LOCK_S):
                try:
                    rq_clean_registries(queue, self._exc_handlers)
                    clean_worker_registry(queue)
                    queue.intermediate_queue.cleanup(self, queue)
                finally:
                    queue.release_maintenance_lock()  # type: ignore[no-untyped-call, unused-ignore]
        self.last_cleaned_at = rq_now()  # type: ignore[assignment, unused-ignore]

    def sweep(self) -> None:
        """RQ's registry maintenance (abandoned jobs retried or failed); one worker at a time (the sweep lock)."""
        try:
            self.clean_registries()
        except redis.RedisError as error:
            self.watch.trouble()
            log.warning("sweep for abandoned jobs failed: %s", error)
            # try again at the next interval, not at every tick
            self.last_cleaned_at = rq_now()  # type: ignore[assignment, unused-ignore]

    def _report_failure(self, job: RQJob, exc_type: type[BaseException] | None, exc_value: BaseException | None,
                        _traceback: Any) -> bool:
        """A job that failed outside ``run`` (timeout, dead worker): tell the member once no retry is left.

        RQ calls this both for jobs that raised here and for jobs abandoned by a worker that died,
        before it decides on a retry; ``retries_left`` says whether one will come.
        """
        if job.func_name != keys.GENERATE_FUNC:
            return True
        if job.retries_left:
            log.warning("job=%s failed (%s) on attempt %d, %d retry(ies) left: back to the front of the queue",
                        job.id, exc_type and exc_type.__name__, attempts_of(self.connection, job), job.retries_left)
            return True
        try:
            payload = Job.model_validate_json(job.args[0])
        except (ValueError, IndexError, TypeError) as error:
            log.error("job=%s failed and its payload cannot be read: %s", job.id, error)
            return True
        code = FAILURE_CODES.get(exc_type.__name__ if exc_type else "", "internal")
        attempts = attempts_of(self.connection, job)
        limit = int(job.timeout or 0)
        cause = (self.runtime.describe_limit(limit, payload) if code == "timeout" and limit > 0
                 else f"{exc_type and exc_type.__name__}: {exc_value}")
        event = self.runtime._failed(payload, code, f"{cause} (after {attempts} attempt(s))",
                                     0.0).model_copy(update={"attempts": attempts})
        with_redis_retry(job.id, lambda: publish_event(self.runtime.conn, event))
        self.runtime.record(event)
        return True


def run_worker(runtime: WorkerRuntime, *, burst: bool = False, on_interrupt: Callable[[], None] | None = None
               ) -> bool:
    """Take jobs until stopped (SIGTERM/SIGINT: the current batch and its post-processing finish first)
    or, in burst mode, drained.

    ``on_interrupt`` replaces that warm shutdown (``generate --local``: its own job, nothing to finish).
    """
    worker = GenerationWorker(runtime, on_interrupt=on_interrupt)
    started = time.perf_counter()
    move_legacy_jobs(runtime.conn)
    log.info("worker %s holds %s, listening on %s", runtime.name, ", ".join(runtime.generators),
             ", ".join(queue.name for queue in worker.queues))
    # RQ's own per-job lines repeat ours (job=<id> ... started/done); keep its warnings and errors
    rq_level = "DEBUG" if log.isEnabledFor(logging.DEBUG) else "WARNING"
    with Announcer(runtime):
        result = worker.work(burst=burst, logging_level=rq_level, with_scheduler=False)
    log.info("worker %s stopped after %.1f s", runtime.name, time.perf_counter() - started)
    return bool(result)
