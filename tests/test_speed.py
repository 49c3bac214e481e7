"""Job time limits from the worker's own measured speed: longer on a slow worker, the override wins."""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest
import redis

import worker.speed
from bot import messages
from ponybot import keys
from ponybot.queue import enqueue
from ponybot.schemas import Job, JobEvent, build_request
from ponybot.settings import Settings
from worker.generate import Generator
from worker.runner import GenerationWorker
from worker.runtime import WorkerRuntime
from worker.speed import ALLOWANCE_S, SAFETY, StepSpeed, measure_speed, time_limit


class Clock:
    """A stand-in for ``time.perf_counter`` that only moves when a step says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Calibrated:
    """The real tiny pipeline, whose every denoising step (and decoding) 'takes' what the test says."""

    def __init__(self, generator: Generator, clock: Clock, step_s: float, decode_s: float) -> None:
        self.model = generator.model
        self.generator, self.clock, self.step_s, self.decode_s = generator, clock, step_s, decode_s

    def generate_batch(self, request: Any, items: Any, *, on_step: Any = None, **options: Any) -> Any:
        def step(index: int, total: int, latents: Any) -> None:
            self.clock.now += self.step_s
            if on_step is not None:
                on_step(index, total, latents)

        outputs = self.generator.generate_batch(request, items, on_step=step, **options)
        self.clock.now += self.decode_s
        return outputs


def measured(generator: Generator, settings: Settings, monkeypatch: pytest.MonkeyPatch, step_s: float,
             decode_s: float = 0.0) -> StepSpeed:
    clock = Clock()
    monkeypatch.setattr(worker.speed.time, "perf_counter", clock)
    return measure_speed(Calibrated(generator, clock, step_s, decode_s), settings)  # type: ignore[arg-type]


def job(settings: Settings, **options: Any) -> Job:
    return Job.create(build_request(settings.limits, **{"prompt": "pony", "width": 512, "height": 512,
                                                        "steps": 25, **options}))


def test_measured_speed_is_per_512_step_and_per_image(settings: Settings, generator: Generator,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # the tests' default size is 256x256: a quarter of the unit, so 0.5 s there is 2 s per 512x512 step
    speed = measured(generator, settings, monkeypatch, step_s=0.5, decode_s=0.25)
    assert speed.step_s == pytest.approx(2.0)
    assert speed.image_s == pytest.approx(1.0)
    assert speed.size == "256x256"


def test_a_slow_worker_gets_a_longer_limit(settings: Settings, generator: Generator,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    slow = measured(generator, settings, monkeypatch, step_s=4.5)  # a full-size model on two CPU cores
    fast = measured(generator, settings, monkeypatch, step_s=1 / 16)
    default = job(settings)  # 512x512, 25 steps
    assert time_limit([default], settings.worker, slow) == math.ceil(ALLOWANCE_S + SAFETY * 18.0 * 25)
    assert time_limit([default], settings.worker, fast) == math.ceil(ALLOWANCE_S + SAFETY * 0.25 * 25)
    # a CPU worker's 25 steps at 18 s each (450 s) fit, whatever a GPU would have needed
    assert time_limit([default], settings.worker, slow) > 18.0 * 25 + 60
    # twice the pixels or twice the images: twice the measured work
    wide = time_limit([job(settings, width=1024, height=512)], settings.worker, slow)
    two = time_limit([job(settings, count=2)], settings.worker, slow)
    assert wide == two == math.ceil(ALLOWANCE_S + SAFETY * 18.0 * 50)


def test_a_batch_gets_the_time_of_all_its_jobs(conn: redis.Redis, settings: Settings,
                                               runtime: WorkerRuntime) -> None:
    runtime.speed = StepSpeed(step_s=2.0, image_s=1.0, size="512x512")
    jobs = [job(settings, count=2), job(settings)]
    for each in jobs:
        enqueue(conn, each, max_queue=10, result_ttl_s=60)
    worker = GenerationWorker(runtime)
    leader = worker.job_class.fetch(jobs[0].id, connection=conn, serializer=worker.serializer)
    assert worker.time_limit(leader, [(leader, jobs[1])]) == math.ceil(ALLOWANCE_S + SAFETY * (2.0 * 75 + 1.0 * 3))
    assert worker.time_limit(leader, []) == math.ceil(ALLOWANCE_S + SAFETY * (2.0 * 50 + 1.0 * 2))


def test_the_operators_step_budget_wins_and_the_cap_caps(settings: Settings) -> None:
    slow = StepSpeed(step_s=18.0, image_s=5.0, size="512x512")
    override = settings.worker.model_copy(update={"step_budget_s": 2.0})
    assert time_limit([job(settings)], override, slow) == math.ceil(ALLOWANCE_S + 2.0 * 25)
    assert time_limit([job(settings)], override, None) == math.ceil(ALLOWANCE_S + 2.0 * 25)  # nothing to measure
    capped = settings.worker.model_copy(update={"job_timeout_s": 300})
    assert time_limit([job(settings)], capped, slow) == 300
    with pytest.raises(ValueError, match="step_budget_s"):
        time_limit([job(settings)], settings.worker, None)


def test_a_runtime_measures_itself_once_when_no_budget_is_set(conn: redis.Redis, settings: Settings,
                                                              runtime: WorkerRuntime) -> None:
    assert runtime.speed is None
    small = job(settings, width=256, height=320)
    first = runtime.time_limit([small])  # measured at the size of the job in hand
    speed = runtime.speed
    assert speed is not None and speed.step_s > 0 and speed.size == "256x320"
    assert runtime.time_limit([small]) == first and runtime.speed is speed


class Stuck:
    """A pipeline that never finishes (as a job far past its limit): the worker's limit must end it."""

    def __init__(self, generator: Generator) -> None:
        self.model = generator.model
        self.entered = threading.Event()

    def generate_deferred(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        threading.Event().wait(120)  # interrupted by the worker's time limit long before
        raise AssertionError("the worker's time limit never fired")

    generate_batch = generate_deferred


@pytest.mark.parametrize("budget", [None, 0.001])
def test_timeout_after_last_attempt_names_the_setting(conn: redis.Redis, settings: Settings, generator: Generator,
                                                      monkeypatch: pytest.MonkeyPatch, budget: float | None) -> None:
    monkeypatch.setattr(worker.speed, "ALLOWANCE_S", 0.0)  # the limit is then 1 s, the least there is
    settings = settings.model_copy(update={"worker": settings.worker.model_copy(update={"step_budget_s": budget})})
    stuck = Stuck(generator)
    runtime = WorkerRuntime(settings, conn, stuck, "w-stuck",  # type: ignore[arg-type]
                            speed=StepSpeed(step_s=0.001, image_s=0.0, size="256x256"))
    slow = Job.create(build_request(settings.limits, prompt="slow", width=256, height=256, steps=4))
    enqueue(conn, slow, max_queue=10, result_ttl_s=120, max_attempts=2)
    GenerationWorker(runtime).work(burst=True)

    assert stuck.entered.is_set()
    [event] = [JobEvent.model_validate_json(f[b"data"]) for _id, f in conn.xrange(keys.EVENTS_STREAM)]
    assert event.kind == "failed" and event.job.id == slow.id  # one event, after the second attempt
    assert event.error_code == "timeout"
    assert "time limit of 1 s" in (event.error_message or "")
    assert event.attempts == 2 and "after 2 attempt(s)" in (event.error_message or "")
    assert ("measured speed" in (event.error_message or "")) is (budget is None)  # the operator's detail
    told = messages.failed(event, mention=False)  # the member's sentence: the count, no setting names
    assert "(tried 2 times)" in told and "Try fewer steps" in told
    assert "worker.step_budget_s" not in told and "attempt(s)" not in told
