"""One worker process's resident state: the pipeline, Redis, settings, and how one batch of jobs runs."""

from __future__ import annotations

import io
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import redis
import torch
from PIL import Image
from prometheus_client import CollectorRegistry

from ponybot import keys
from ponybot.cpus import available_cpus
from ponybot.errors import ForgedJobError, GenerationError
from ponybot.metrics import WorkerMetrics
from ponybot.metrics import serve as serve_metrics
from ponybot.parameters import format_parameters
from ponybot.policy import Decision, EffectivePolicy, FlaggedAction, Mode, Strictness, apply, resolve
from ponybot.policy_store import PolicyStore
from ponybot.queue import publish_event, publish_progress
from ponybot.schemas import (
    STRENGTH,
    GenerationRequest,
    ImageResult,
    Job,
    JobEvent,
    JobKind,
    ProgressEvent,
    parse_size,
    upscale_size,
    utcnow,
)
from ponybot.settings import Settings
from ponybot.status import SafetyState, publish_safety
from worker.generate import BatchItem, GenerationOutput, Generator
from worker.loading import compile_model, load_model, resolve_device
from worker.png import encode_png, latent_preview
from worker.safety import ImageCheck, Verdict, load_safety

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


class WorkerRuntime:
    """The resident pipeline plus everything one job needs: Redis, settings, a name."""

    def __init__(self, settings: Settings, conn: redis.Redis, generator: Generator, name: str,
                 classifier: ImageCheck | None = None, registry: CollectorRegistry | None = None) -> None:
        self.metrics = WorkerMetrics(registry or CollectorRegistry())
        self.settings = settings
        self.conn = conn
        self.generator = generator
        self.name = name
        self.classifier = classifier
        self.publish_safety()
        self.policies = PolicyStore(conn)
        #: CPU work after the GPU (classifier, PNG encoding), spread over the host's cores
        self.pool = ThreadPoolExecutor(max_workers=min(8, cpu_threads(settings)), thread_name_prefix="ponybot-post")
        #: jobs the worker claimed to run in one batch with the job being run
        self.batched: list[Job] = []
        #: when set, the only job ids this worker runs (``generate --local``: the job it enqueued itself)
        self.only_jobs: frozenset[str] | None = None

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
        """Run the job in ``payload`` (with any jobs batched beside it) and publish each one's event."""
        jobs = [Job.model_validate_json(payload), *self.batched]
        strangers = [job.id for job in jobs if self.only_jobs is not None and job.id not in self.only_jobs]
        if strangers:
            raise ForgedJobError(f"refusing job(s) {', '.join(strangers)}: this worker runs only "
                                 f"{', '.join(sorted(self.only_jobs or ()))}")
        events = self.run_batch(jobs)
        return {"events": {event.job.id: event.kind for event in events}}

    def run_batch(self, jobs: list[Job]) -> list[JobEvent]:
        """Jobs of one shape as one batch; each gets its own ``done`` or ``failed`` event."""
        now = utcnow()
        queued = {job.id: (now - job.created_at).total_seconds() for job in jobs}
        events: dict[str, JobEvent] = {}
        planned: list[tuple[Job, EffectivePolicy | None, Decision]] = []
        for job in jobs:
            log.info("job=%s started: %s %dx%d x%d, %d steps, %s (batch of %d)", job.id, job.kind.value,
                     job.request.width, job.request.height, job.request.count, job.request.steps,
                     job.request.sampler.value, len(jobs))
            policy = self.policy_for(job)
            decision = apply(policy, job.request, quality=job.quality_tags, safe_tag=self.settings.policy.safe_tag)
            if decision.allowed:
                planned.append((job, policy, decision))
            else:
                events[job.id] = self._failed(job, "policy", decision.reason or "refused", queued[job.id])
        if planned:
            events.update(self._generate(planned, queued))
        for job in jobs:
            event = events[job.id]
            with_redis_retry(job.id, lambda event=event: publish_event(self.conn, event))  # type: ignore[misc]
            self.record(event)
            log.info("job=%s %s in %.2f s (waited %.2f s)", job.id, event.kind, event.generation_s, queued[job.id])
        return [events[job.id] for job in jobs]

    def _generate(self, planned: list[tuple[Job, EffectivePolicy | None, Decision]], queued: dict[str, float]
                  ) -> dict[str, JobEvent]:
        leader = planned[0][0]
        offsets, total_images = [], 0
        for job, _policy, _decision in planned:
            offsets.append(total_images)
            total_images += job.request.count

        every = self.settings.worker.preview_every

        def on_step(step: int, total: int, latents: torch.Tensor) -> None:
            # one copy to the host (a GPU sync) on preview steps only, shared by the batch's jobs
            host = latents.cpu() if every and step % every == 0 and step < total else None
            for (job, _policy, _decision), offset in zip(planned, offsets, strict=True):
                self._progress(job, step, total, None if host is None else host[offset])

        try:
            request, init_image = self.follow_up(leader, planned[0][1])
            items = [BatchItem(decision.prompt, decision.negative_prompt, job.seed, request.count
                               if init_image is not None else job.request.count) for job, _p, decision in planned]
            outputs = self.generator.generate_batch(request, items, on_step=on_step, init_image=init_image,
                                                    strength=STRENGTH.get(leader.kind, 1.0))
        except GenerationError as error:
            return {job.id: self._failed(job, error.code, str(error), queued[job.id]) for job, _p, _d in planned}
        except torch.OutOfMemoryError:
            message = "the GPU ran out of memory: try a smaller size or count"
            return {job.id: self._failed(job, "out_of_memory", message, queued[job.id]) for job, _p, _d in planned}
        failed = {job.id: self._failed(job, output.error.code, str(output.error), queued[job.id])
                  for (job, _p, _d), output in zip(planned, outputs, strict=True) if output.error is not None}
        if failed:
            kept = [(plan, output) for plan, output in zip(planned, outputs, strict=True) if plan[0].id not in failed]
            planned, outputs = [plan for plan, _o in kept], [output for _p, output in kept]
        # After the GPU: the classifier per job and the PNG per image run side by side on the CPU
        # (onnxruntime and zlib release the GIL), instead of one after another while the GPU waits.
        screened = self.side_by_side(lambda pair: self.screen(pair[0][0], pair[0][1], pair[1].images),
                                     list(zip(planned, outputs, strict=True)))
        for output, verdicts in zip(outputs, screened, strict=True):
            output.nsfw, output.tags = [v.flagged for v in verdicts], [v.tags for v in verdicts]
        return {**failed, **self._store(planned, outputs, queued)}

    def side_by_side(self, work: Callable[[T], R], items: list[T]) -> list[R]:
        """``work`` over ``items`` on the CPU pool (in this thread when there is only one)."""
        if len(items) <= 1:
            return [work(item) for item in items]
        return list(self.pool.map(work, items))

    def record(self, event: JobEvent) -> None:
        metrics = self.metrics
        metrics.wait.observe(max(0.0, event.queued_s))
        if event.kind == "failed":
            metrics.failures.labels(event.error_code or "internal").inc()
            return
        metrics.generation.observe(event.generation_s)
        metrics.images.inc(len(event.images))
        metrics.withheld.inc(event.withheld)
        if self.generator.model.device.type == "cuda":
            metrics.gpu_memory.set(torch.cuda.max_memory_allocated(self.generator.model.device))

    def follow_up(self, job: Job, policy: EffectivePolicy | None = None
                  ) -> tuple[GenerationRequest, Image.Image | None]:
        """The request as generated, and the source image of an upscale or variation (checked in SFW channels)."""
        if job.kind is JobKind.TXT2IMG or job.source is None:
            return job.request, None
        data = self.conn.get(job.source.key)
        if data is None:
            raise GenerationError("expired", "the image it starts from has expired")
        source = Image.open(io.BytesIO(data)).convert("RGB")  # type: ignore[arg-type]
        sfw = policy is not None and policy.mode is Mode.SFW
        if sfw and self.screen(job, policy, [source])[0].flagged is not False:
            raise GenerationError("unsafe_source", "the image it starts from did not pass this channel's image check")
        width, height = source.size
        if job.kind is JobKind.UPSCALE:
            width, height = upscale_size(width, height, self.settings.limits.max_upscale_pixels)
            source = source.resize((width, height), Image.Resampling.LANCZOS)
        return job.request.model_copy(update={"width": width, "height": height, "count": 1}), source

    def _progress(self, job: Job, step: int, total: int, latents: torch.Tensor | None) -> None:
        """Tell the bot how far the job is, with a preview of its first image when ``latents`` is given."""
        preview = None if latents is None else latent_preview(latents)
        try:
            publish_progress(self.conn, ProgressEvent.create(job.id, step, total, preview))
        except redis.RedisError as error:  # progress is lossy by design
            log.warning("job=%s progress not sent: %s", job.id, error)

    def _store(self, planned: list[tuple[Job, EffectivePolicy | None, Decision]], outputs: list[GenerationOutput],
               queued: dict[str, float]) -> dict[str, JobEvent]:
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
                                             self.generator.model.name, size=image.size)
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

    def _failed(self, job: Job, code: str, message: str, queued_s: float) -> JobEvent:
        log.error("job=%s failed (%s): %s", job.id, code, message)
        return JobEvent(kind="failed", job=job, error_code=code, error_message=message, queued_s=queued_s,
                        worker=self.name)


def with_redis_retry(job_id: str, action: Callable[[], T], give_up_s: float = 120.0) -> T:
    """Run a Redis write, retrying with backoff while Redis restarts, so a finished job is not lost.

    ``action`` must do the whole write each time it is called (a pipeline built inside it, not
    one built outside: redis-py empties a pipeline whose ``execute()`` failed).
    """
    delay, waited = 0.5, 0.0
    while True:
        try:
            return action()
        except (redis.ConnectionError, redis.TimeoutError) as error:
            if waited >= give_up_s:
                raise
            log.warning("job=%s Redis unavailable (%s): retrying in %.1f s", job_id, error, delay)
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, 10)



def cpu_threads(settings: Settings) -> int:
    """This worker's CPU threads: ``worker.cpu_threads``, else ``OMP_NUM_THREADS`` when set, else every CPU
    its cgroup and affinity allow."""
    if settings.worker.cpu_threads:
        return settings.worker.cpu_threads
    omp = os.environ.get("OMP_NUM_THREADS", "")
    return int(omp) if omp.isdigit() and int(omp) > 0 else available_cpus()


def limit_cpu_threads(threads: int) -> None:
    """Cap torch's (and OpenMP's) threads in this process: several workers on one host share its cores."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(max(1, min(threads, 4)))
    except RuntimeError:  # only possible before torch's first parallel work; the intra-op cap still holds
        log.debug("torch inter-op threads were already set")


def default_worker_name(device: torch.device) -> str:
    return f"ponybot-{socket.gethostname()}-{device}-{uuid.uuid4().hex[:6]}"


def build_runtime(settings: Settings, conn: redis.Redis, *, model_source: str | None = None,
                  name: str | None = None, metrics_port: int = 0) -> WorkerRuntime:
    """Load the model (once, before any job is taken) and bind it to Redis."""
    device = resolve_device(settings.worker.device)
    threads = cpu_threads(settings)
    limit_cpu_threads(threads)
    log.info("using %d CPU thread(s)", threads)
    if device.type == "cpu":
        log.warning("running on the CPU: a real SD1.5 model takes minutes per image here")
    model = load_model(model_source or settings.model.source, settings.model, device)
    generator = Generator(model)
    if settings.worker.compile and device.type == "cuda":
        compile_model(model, settings.model.cache_dir, settings.worker.compile_mode)
        warm_up(generator, settings)
    classifier = load_safety(settings.safety, settings.model.cache_dir, threads=min(2, threads))
    registry = serve_metrics(metrics_port, conn)
    return WorkerRuntime(settings, conn, generator, name or default_worker_name(device), classifier, registry)


def warm_up(generator: Generator, settings: Settings) -> None:
    """Compile for every batch size this worker will run, before taking the first job."""
    width, height = parse_size(settings.defaults.size)
    request = GenerationRequest(prompt="warm-up", width=width, height=height, steps=2)
    sizes = sorted({1, *(2**i for i in range(1, 5) if 2**i <= settings.worker.max_batch), settings.worker.max_batch})
    for size in sizes:
        started = time.perf_counter()
        generator.generate_batch(request, [BatchItem("warm-up", "", 0, 1)] * size)
        log.info("compiled and warmed up batch size %d in %.1f s", size, time.perf_counter() - started)


