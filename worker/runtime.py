"""One worker process's resident state: the pipeline, Redis, settings, and how one batch of jobs runs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
import torch
from PIL import Image
from prometheus_client import CollectorRegistry

from ponybot import keys
from ponybot.cpus import cpu_threads
from ponybot.errors import ForgedJobError, GenerationError, InvalidRequestError, Reason
from ponybot.images import ImageLimits
from ponybot.metrics import WorkerMetrics
from ponybot.networks import check_lora_count, parse_loras
from ponybot.parameters import format_parameters
from ponybot.policy import (
    Decision,
    EffectivePolicy,
    FlaggedAction,
    Mode,
    Strictness,
    apply,
    resolve,
    warm_prompt_filter,
)
from ponybot.policy_store import PolicyStore
from ponybot.queue import publish_event, publish_progress
from ponybot.schemas import (
    ImageResult,
    Job,
    JobEvent,
    JobKind,
    ProgressEvent,
    Speed,
    utcnow,
)
from ponybot.settings import Settings
from ponybot.status import SafetyState, publish_safety
from worker.describe import describe
from worker.generate import BatchItem, DeferredBatch, GenerationOutput, Generator
from worker.inpaint import Prepared
from worker.png import encode_png
from worker.progress import BatchProgress
from worker.retry import with_redis_retry
from worker.safety import ImageCheck, Verdict
from worker.sources import inpaint_point, starting_point
from worker.speed import ALLOWANCE_S, StepSpeed, describe_limit, measure_speed, time_limit

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Batch:
    """One batch between the GPU stage and the post stage."""

    jobs: list[Job]  #: in the order their events go out
    queued: dict[str, float]  #: seconds each waited in the queue
    planned: list[tuple[Job, EffectivePolicy | None, Decision]] = field(default_factory=list)
    events: dict[str, JobEvent] = field(default_factory=dict)  #: decided before the post stage (refusals)
    generated: DeferredBatch | None = None  #: the planned jobs' images, on their way to the host
    generator: Generator | None = None  #: the model that draws them

    def fail(self, event: Callable[[Job], JobEvent]) -> None:
        """Every planned job fails with ``event(job)``; nothing is left to post-process."""
        self.events.update({job.id: event(job) for job, _p, _d in self.planned})
        self.generated = None


class WorkerRuntime:
    """The resident pipeline plus everything one job needs: Redis, settings, a name."""

    def __init__(self, settings: Settings, conn: redis.Redis, generators: Generator | dict[str, Generator], name: str,
                 classifier: ImageCheck | None = None, registry: CollectorRegistry | None = None,
                 speed: StepSpeed | dict[str, StepSpeed] | None = None) -> None:
        self.metrics = WorkerMetrics(registry or CollectorRegistry())
        self.settings = settings
        self.conn = conn
        #: model name -> its resident pipeline; one generator alone is the default model's
        self.generators = generators if isinstance(generators, dict) else {settings.default_model: generators}
        self.name = name
        self.classifier = classifier
        self.publish_safety()
        self.policies = PolicyStore(conn)
        warm_prompt_filter(settings.policy)  # at start-up, not in the first job
        #: CPU work after the GPU (classifier, PNG encoding), spread over the host's cores
        self.pool = ThreadPoolExecutor(max_workers=min(8, cpu_threads(settings)), thread_name_prefix="ponybot-post")
        #: jobs the worker claimed to run in one batch with the job being run
        self.batched: list[Job] = []
        #: model name -> this worker's measured speed with it (absent until measured; never needed under
        #: ``worker.step_budget_s``); one speed alone is the first model's
        self.speeds = dict(speed) if isinstance(speed, dict) else {} if speed is None else {
            next(iter(self.generators)): speed}
        #: when set, the only job ids this worker runs (``generate --local``: the job it enqueued itself)
        self.only_jobs: frozenset[str] | None = None
        #: the batch :meth:`run` generated and left for the post stage
        self.pending: Batch | None = None

    @property
    def speed(self) -> StepSpeed | None:
        """The first model's measured speed (the only one of a single-model worker)."""
        return self.speeds.get(next(iter(self.generators)))

    @speed.setter
    def speed(self, value: StepSpeed) -> None:
        self.speeds[next(iter(self.generators))] = value

    def time_limit(self, jobs: list[Job]) -> int:
        """Seconds ``jobs`` (one batch, one model) may run here: from ``worker.step_budget_s`` if set, else from
        the measured speed of their model.

        A runtime built without measuring (as tests build them) measures itself now, at the size of the
        job in hand. A model this worker does not hold gets :data:`ALLOWANCE_S` (it is refused as it runs).
        """
        model = jobs[0].request.model or self.settings.default_model
        if model not in self.generators:
            return int(ALLOWANCE_S)
        if self.settings.worker.step_budget_s is None and model not in self.speeds:
            request = jobs[0].request
            self.speeds[model] = measure_speed(self.generators[model], self.settings, (request.width, request.height))
        return time_limit(jobs, self.settings.worker, self.speeds.get(model))

    def describe_limit(self, limit: int, job: Job | None = None) -> str:
        """What a member is told about ``job`` running past ``limit`` (names the setting to change)."""
        model = (job.request.model if job else None) or self.settings.default_model
        return describe_limit(limit, self.settings.worker, self.speeds.get(model, self.speed))

    @property
    def generator(self) -> Generator:
        """The first model's generator (the only one of a single-model worker)."""
        return next(iter(self.generators.values()))

    @generator.setter
    def generator(self, value: Generator) -> None:
        self.generators[next(iter(self.generators))] = value

    def generator_for(self, job: Job) -> Generator:
        model = job.request.model or self.settings.default_model
        if model not in self.generators:
            raise GenerationError("model", f"this worker does not hold the model {model!r}")
        return self.generators[model]

    def policy_for(self, job: Job) -> EffectivePolicy | None:
        """The channel's policy as stored now (a moderator's change applies to queued jobs too)."""
        if job.origin is None:
            return None
        rules = self.policies.rules_for(job.origin.guild_id, job.origin.channel_id)
        return resolve(rules, age_restricted=job.origin.channel_nsfw, settings=self.settings.policy)

    def publish_safety(self) -> None:
        """The image check as loaded, for ``ponybot status`` and ``/status``, and its metric."""
        state = self.classifier.state if self.classifier else SafetyState(classifiers=[], missing={
            "image check": "not loaded"})
        for name in state.missing:
            self.metrics.safety_missing.labels(name).set(1)
        with_redis_retry("-", lambda: publish_safety(self.conn, self.name, state))

    def screen(self, job: Job, policy: EffectivePolicy | None, images: list[Image.Image]) -> list[Verdict]:
        """The image check's verdicts at the channel's strictness; None where it could not tell (SFW withholds)."""
        strictness = policy.strictness if policy is not None else Strictness.STANDARD
        verdicts = [Verdict(None)] * len(images)
        if self.classifier is None:
            if policy is not None and policy.mode is Mode.SFW:
                log.error("job=%s no image classifier is loaded: withholding its images in an SFW channel", job.id)
        else:
            try:
                verdicts = list(self.classifier.classify(images, strictness))
            except Exception:  # any failure of the classifier must withhold, never post
                log.exception("job=%s image classifier %s failed: withholding in SFW channels", job.id,
                              self.classifier.name)
        self.metrics.unchecked.inc(sum(verdict.flagged is None for verdict in verdicts))
        return verdicts

    def run(self, payload: str) -> dict[str, Any]:
        """Run the job in ``payload`` with any jobs batched beside it; publish each one's event.

        With ``worker.overlap_depth`` above 0 this returns once the GPU has the batch and leaves
        its post-processing in :attr:`pending`, for the worker's post stage to :meth:`finish_batch`.
        """
        jobs = [Job.model_validate_json(payload), *self.batched]
        strangers = [job.id for job in jobs if self.only_jobs is not None and job.id not in self.only_jobs]
        if strangers:
            raise ForgedJobError(f"refusing job(s) {', '.join(strangers)}: this worker runs only "
                                 f"{', '.join(sorted(self.only_jobs or ()))}")
        batch = self.start_batch(jobs)
        if self.settings.worker.overlap_depth:
            self.pending = batch
            return {"events": "pending"}
        events = self.finish_batch(batch)
        return {"events": {event.job.id: event.kind for event in events}}

    def take_pending(self) -> Batch | None:
        """The batch :meth:`run` left for post-processing (once)."""
        batch, self.pending = self.pending, None
        return batch

    def run_batch(self, jobs: list[Job]) -> list[JobEvent]:
        """Jobs of one shape as one batch; each gets its own ``done`` or ``failed`` event."""
        return self.finish_batch(self.start_batch(jobs))

    def start_batch(self, jobs: list[Job]) -> Batch:
        """The GPU stage: policy, then generation queued on the GPU; what is left goes to :meth:`finish_batch`.

        A job whose event is already on the stream (its worker died after publishing it, before
        RQ heard the job was done) is not run again.
        """
        now = utcnow()
        def read() -> list[int]:
            with self.conn.pipeline(transaction=False) as pipe:
                for job in jobs:
                    pipe.exists(keys.published(job.id))
                return list(pipe.execute())

        published = with_redis_retry(jobs[0].id, read)
        for job, done in zip(jobs, published, strict=True):
            if done:
                log.warning("job=%s its event was published by an earlier attempt: not run again", job.id)
        jobs = [job for job, done in zip(jobs, published, strict=True) if not done]
        batch = Batch(jobs, {job.id: (now - job.created_at).total_seconds() for job in jobs})
        for job in jobs:
            log.info("job=%s started: %s %dx%d x%d, %d steps, %s%s (batch of %d)", job.id, job.kind.value,
                     job.request.width, job.request.height, job.request.count, job.request.steps,
                     job.request.sampler.value, ", fast" if job.request.speed is Speed.FAST else "", len(jobs))
            policy = self.policy_for(job)
            decision = apply(policy, job.request, quality=job.quality_tags, safe_tag=self.settings.policy.safe_tag,
                             model=self.settings.models.get(job.request.model or self.settings.default_model))
            try:
                check_lora_count(parse_loras(job.request.prompt), self.settings.model.max_loras)
            except InvalidRequestError as error:
                decision = Decision(False, error.as_reason(), decision.prompt, decision.negative_prompt, "prompt")
            if decision.allowed:
                batch.planned.append((job, policy, decision))
            else:
                batch.events[job.id] = self._failed(job, "policy", str(decision.reason), batch.queued[job.id],
                                                    reason=decision.reason)
        if batch.planned and batch.planned[0][0].kind is JobKind.DESCRIBE:
            self._describe(batch)
        elif batch.planned:
            self._generate(batch)
        return batch

    def _describe(self, batch: Batch) -> None:
        """A ``/describe`` job: no GPU; the tagger's ready prompt is its event's (and its Generate button's)."""
        (job, policy, _decision), started = batch.planned[0], time.perf_counter()
        batch.planned = []
        try:
            prompt = describe(self.conn, job, policy, self.screen, self.settings)
        except GenerationError as error:
            batch.events[job.id] = self._failed(job, error.code, str(error), batch.queued[job.id])
            return
        batch.events[job.id] = JobEvent(kind="done", job=job, prompt=prompt, queued_s=batch.queued[job.id],
                                        generation_s=time.perf_counter() - started, worker=self.name,
                                        mode=policy.mode.value if policy is not None else None)

    def finish_batch(self, batch: Batch) -> list[JobEvent]:
        """The post stage: images to the host, classifier, PNGs, Redis writes, each job's event, metrics."""
        if batch.generated is not None:
            outputs = batch.generated.outputs()
            failed = {job.id: self._failed(job, output.error.code, str(output.error), batch.queued[job.id])
                      for (job, _p, _d), output in zip(batch.planned, outputs, strict=True)
                      if output.error is not None}
            batch.events.update(failed)
            kept = [(plan, output) for plan, output in zip(batch.planned, outputs, strict=True)
                    if plan[0].id not in failed]
            planned, outputs = [plan for plan, _o in kept], [output for _p, output in kept]
            # the classifier per job and the PNG per image run side by side on the CPU
            # (onnxruntime and zlib release the GIL), instead of one after another
            screened = self.side_by_side(lambda pair: self.screen(pair[0][0], pair[0][1], pair[1].images),
                                         list(zip(planned, outputs, strict=True)))
            for output, verdicts in zip(outputs, screened, strict=True):
                output.nsfw, output.tags = [v.flagged for v in verdicts], [v.tags for v in verdicts]
            assert batch.generator is not None
            batch.events.update(self._store(planned, outputs, batch.queued, batch.generator))
        for job in batch.jobs:
            event = batch.events[job.id]
            with_redis_retry(job.id, lambda event=event: publish_event(self.conn, event))  # type: ignore[misc, unused-ignore]
            self.record(event)
            log.info("job=%s %s in %.2f s (waited %.2f s)", job.id, event.kind, event.generation_s,
                     batch.queued[job.id])
        return [batch.events[job.id] for job in batch.jobs]

    def _generate(self, batch: Batch) -> None:
        planned, queued = batch.planned, batch.queued
        leader = planned[0][0]
        offsets, total_images = [], 0
        for job, _policy, _decision in planned:
            offsets.append(total_images)
            total_images += job.request.count
        progress = BatchProgress([job.id for job, _p, _d in planned], offsets, self._publish_progress,
                                 interval_s=self.settings.discord.progress_edit_interval_s,
                                 preview_from=self.settings.worker.preview_every)
        try:
            limits = self.settings.limits.max_upscale_pixels, ImageLimits.of(self.settings.uploads, count_bytes=False)
            init_image: Image.Image | None = None
            inpaint: Prepared | None = None
            if leader.kind in (JobKind.INPAINT, JobKind.OUTPAINT):
                request, inpaint = inpaint_point(self.conn, leader, planned[0][1], self.screen, *limits)
            else:
                request, init_image = starting_point(self.conn, leader, planned[0][1], self.screen, *limits)
            generator = self.generator_for(leader)
            items = [BatchItem(decision.prompt, decision.negative_prompt, job.seed, request.count
                               if init_image is not None or inpaint is not None else job.request.count)
                     for job, _p, decision in planned]
            batch.generator = generator
            batch.generated = generator.generate_deferred(request, items, on_step=progress.on_step,
                                                          init_image=init_image, inpaint=inpaint,
                                                          strength=leader.strength,
                                                          loras=parse_loras(leader.request.prompt))
        except GenerationError as error:
            code, reason = error.code, str(error)
            batch.fail(lambda job: self._failed(job, code, reason, queued[job.id]))
        except torch.OutOfMemoryError:
            message = "the GPU ran out of memory: try a smaller size or count"
            batch.fail(lambda job: self._failed(job, "out_of_memory", message, queued[job.id]))

    def _publish_progress(self, make: Callable[[], ProgressEvent]) -> None:
        """Build and send a progress event on the CPU pool: the GPU stage never waits for it."""
        def send() -> None:
            try:
                publish_progress(self.conn, make())
            except redis.RedisError as error:  # progress is lossy by design
                log.warning("progress not sent: %s", error)

        self.pool.submit(send)

    def side_by_side(self, work: Callable[[T], R], items: list[T]) -> list[R]:
        """``work`` over ``items`` on the CPU pool (in this thread when there is only one)."""
        if len(items) <= 1:
            return [work(item) for item in items]
        return list(self.pool.map(work, items))

    def record(self, event: JobEvent) -> None:
        metrics = self.metrics
        model = event.job.request.model or self.settings.default_model
        metrics.wait.labels(model).observe(max(0.0, event.queued_s))
        if event.kind == "failed":
            metrics.failures.labels(model, event.error_code or "internal").inc()
            return
        metrics.generation.labels(model).observe(event.generation_s)
        metrics.images.labels(model).inc(len(event.images))
        metrics.withheld.labels(model).inc(event.withheld)
        if self.generator.model.device.type == "cuda":
            metrics.gpu_memory.set(torch.cuda.max_memory_allocated(self.generator.model.device))

    def _store(self, planned: list[tuple[Job, EffectivePolicy | None, Decision]], outputs: list[GenerationOutput],
               queued: dict[str, float], generator: Generator) -> dict[str, JobEvent]:
        """Each job's kept images as PNGs in Redis (one round trip) and its ``done`` event."""
        ttl = self.settings.worker.result_ttl_s
        results: dict[str, list[ImageResult]] = {}
        pngs: dict[str, tuple[Image.Image, str]] = {}
        for (job, policy, decision), output in zip(planned, outputs, strict=True):
            results[job.id] = []
            for index, (image, seed, flag) in enumerate(zip(output.images, output.seeds, output.nsfw, strict=True)):
                flagged = flag is not False
                withheld = flagged and policy is not None and policy.mode is Mode.SFW
                spoiler = flagged and policy is not None and policy.flagged is FlaggedAction.SPOILER
                key = None
                if not withheld:
                    key = keys.image(job.id, index)
                    text = format_parameters(job, index, decision.prompt, decision.negative_prompt,
                                             generator.model.name, size=image.size, extra=output.hashes,
                                             fast_interval=generator.fast_interval)
                    pngs[key] = (image, text)
                results[job.id].append(ImageResult(
                    index=index, seed=seed, key=key, width=image.width, height=image.height, flagged=flagged,
                    withheld=withheld, spoiler=spoiler and not withheld,
                    tags=output.tags[index] if output.tags else {}))
        encoded = dict(zip(pngs, self.side_by_side(lambda item: encode_png(*item), list(pngs.values())), strict=True))

        def write() -> None:  # a fresh pipeline each attempt: a failed execute() empties its commands
            with self.conn.pipeline(transaction=False) as pipe:
                for key, png in encoded.items():
                    pipe.set(key, png, ex=ttl)
                pipe.execute()

        if encoded:
            with_redis_retry(planned[0][0].id, write)
        events = {}
        for (job, policy, decision), output in zip(planned, outputs, strict=True):
            images = results[job.id]
            if any(image.withheld for image in images):
                log.info("job=%s %d of %d image(s) withheld by the SFW policy", job.id,
                         sum(i.withheld for i in images), len(images))
            events[job.id] = JobEvent(kind="done", job=job, images=images, prompt=decision.prompt,
                                      negative_prompt=decision.negative_prompt, queued_s=queued[job.id],
                                      generation_s=output.seconds, worker=self.name,
                                      mode=policy.mode.value if policy is not None else None)
        return events

    def _failed(self, job: Job, code: str, message: str, queued_s: float, *, reason: Reason | None = None
                ) -> JobEvent:
        """A ``failed`` event: ``message`` is the operator's English detail (logged, and read by the CLI);
        the member is told ``reason`` (a catalog message) or the bot's sentence for ``code``."""
        log.error("job=%s failed (%s): %s", job.id, code, message)
        return JobEvent(kind="failed", job=job, error_code=code, error_message=message, reason=reason,
                        queued_s=queued_s, worker=self.name)
