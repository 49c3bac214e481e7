"""The ``ponybot`` command. Each subcommand imports its side (bot or worker) only when run."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

import redis
from pydantic import ValidationError

from ponybot import __version__
from ponybot.commands import doctor, init_cli, invite, pictures_cli, safety_cli, styles_cli
from ponybot.connection import RedisTarget
from ponybot.errors import ConfigError, InvalidRequestError, ModelLoadError, NoWorkerError, PonybotError
from ponybot.options import make_request
from ponybot.policy import Mode, PolicyRules, Strictness, apply, resolve
from ponybot.preflight import check_port, writable_folder
from ponybot.queue import (
    cancel_job,
    connect,
    enqueue,
    generation_queue,
    job_model,
    last_event_id,
    load_image,
    record_ttl,
    resolve_redis,
    wait_for_event,
)
from ponybot.redis_server import EmbeddedRedis
from ponybot.schemas import (
    MAX_PROMPT_CHARS,
    MAX_SEED,
    GenerationRequest,
    Job,
    Sampler,
    Speed,
    build_request,
    shorten,
)
from ponybot.settings import (
    DefaultSettings,
    LimitSettings,
    Settings,
    WorkerSettings,
    load_settings,
    unknown_environment,
)

log = logging.getLogger("ponybot")

EXIT_FAILED = 1
EXIT_USAGE = 2
#: A setting or model that keeps a worker from starting: ``ponybot up`` does not restart it.
EXIT_CANNOT_START = 3
EXIT_INTERRUPTED = 130

DEFAULTS = DefaultSettings()


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def complain(text: str) -> None:
    sys.stderr.write(f"ponybot: {text}\n")
    sys.stderr.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ponybot", description="pony-diffusion on Discord, with GPU workers.")
    parser.add_argument("--config", help="settings file (default: $PONYBOT_CONFIG, else ./config.toml if present)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="DEBUG, INFO, WARNING or ERROR (default: log.level, INFO)")
    parser.add_argument("--version", action="version", version=f"ponybot {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str = "") -> argparse.ArgumentParser:
        sentence = f"{summary[0].upper()}{summary[1:]}. {description}".strip()
        return commands.add_parser(name, help=summary, description=sentence)

    worker = command("worker", "run a GPU worker: load the model, then take jobs",
                     "One per GPU; any host that reaches the Redis adds capacity.")
    worker.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: worker.device, auto)")
    worker.add_argument("--models", help="comma-separated model names from [models] to hold "
                                         "(default: model.default, else pony-v4)")
    worker.add_argument("--model", help="hub id, diffusers folder, .safetensors file or tiny for the (first) model "
                                        "held (default: its source)")
    worker.add_argument("--burst", action="store_true", help="exit once the queue is empty (default: keep taking jobs)")
    worker.add_argument("--name", help="worker name shown in status and logs (default: host, device, random)")
    worker.add_argument("--metrics-port", type=int,
                        help="Prometheus port, 0..65535, 0 = off (default: metrics.worker_port, 0)")

    generate = command("generate", "generate images without Discord",
                       "Through the queue that `ponybot up` or `ponybot worker` serve, or with --local in this "
                       "process (a private Redis and queue). Same defaults as /generate.")
    generate.add_argument("prompt", help=f"what to draw, 1..{MAX_PROMPT_CHARS} characters; A1111 emphasis "
                                         "and BREAK work")
    generate.add_argument("--negative", help=f"negative prompt, up to {MAX_PROMPT_CHARS} characters "
                                             "(default: defaults.negative_prompt, empty)")
    generate.add_argument("--seed", type=int, help=f"0..{MAX_SEED}; image i gets (seed + i) mod 2**32 "
                                                   "(default: random, always printed)")
    generate.add_argument("--steps", type=int,
                          help=f"1..limits.max_steps ({LimitSettings().max_steps}) (default: defaults.steps, "
                               f"{DEFAULTS.steps})")
    generate.add_argument("--cfg", type=float, help=f"guidance scale, 1..20 (default: defaults.cfg, {DEFAULTS.cfg:g})")
    generate.add_argument("--size", help="WIDTHxHEIGHT, multiples of 64 from 256 to 1024, at most "
                                         f"limits.max_pixels (default: defaults.size, {DEFAULTS.size})")
    generate.add_argument("--count", type=int, help=f"images, 1..limits.max_count ({LimitSettings().max_count}) "
                                                    f"(default: defaults.count, {DEFAULTS.count})")
    generate.add_argument("--sampler", help=f"{', '.join(s.value for s in Sampler)} "
                                            f"(default: defaults.sampler, {DEFAULTS.sampler.value})")
    generate.add_argument("--clip-skip", type=int,
                          help="1 = last CLIP layer, 2 = penultimate, A1111's convention "
                               f"(default: defaults.clip_skip, {DEFAULTS.clip_skip})")
    generate.add_argument("--quality", action=argparse.BooleanOptionalAction, default=None,
                          help="add the model card's quality tags, as /generate does; --no-quality leaves them "
                               f"out (default: defaults.quality, {'on' if DEFAULTS.quality else 'off'})")
    generate.add_argument("--speed", choices=[s.value for s in Speed],
                          help="normal, or fast: DeepCache feature reuse, quicker with a little less detail "
                               "(default: normal)")
    generate.add_argument("--model", help="a model of [models] (default: model.default); with --local also a "
                                          "source for the default model: hub id, diffusers folder, .safetensors "
                                          "file or tiny (default: its source)")
    pictures_cli.add_arguments(generate)
    generate.add_argument("--out", type=Path, help="output folder, created if missing (default: cli.out_dir, out)")
    generate.add_argument("--local", action="store_true",
                          help="run a worker in this process, with its own private Redis and queue: never "
                               "touches a shared queue (default: off, use the running queue)")

    command("bot", "run the Discord bot", "Needs discord.token (or DISCORD_TOKEN).")

    up = command("up", "one machine: embedded Redis, a worker per GPU, and the bot",
                 "Ctrl-C stops the workers first (they finish their jobs), then the bot, then Redis.")
    up.add_argument("--workers", type=int,
                    help="how many workers, 0 or more (default: one per visible GPU, else one on the CPU)")

    command("status", "workers, queue depth, throughput and current wait")

    command("gallery", "run the community gallery: its web site and the loop that stores images")

    policy = command("policy", "try the channel policy's rules", "Nothing is generated.")

    policy_commands = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    check = policy_commands.add_parser(
        "check", help="what the policy does with a prompt (JSON; exit 1 if refused)",
        description="What the policy does with a prompt: JSON on stdout; exit 1 if refused.")
    check.add_argument("prompt", help=f"the member's prompt, 1..{MAX_PROMPT_CHARS} characters")
    check.add_argument("--mode", choices=["sfw", "nsfw"], default="sfw",
                       help="sfw or nsfw: as in an age-restricted channel whose policy allows NSFW (default: sfw)")
    check.add_argument("--negative", default="", help="the member's negative prompt (default: empty)")
    check.add_argument("--strictness", choices=["standard", "strict"], default="standard",
                       help="an SFW channel's strictness: strict refuses the term lists' strict entries too")
    styles_cli.add_parser(commands)
    safety_cli.add_parser(commands)
    invite.add_parser(commands)
    doctor.add_parser(commands)
    init_cli.add_parser(commands)
    return parser


def request_from_args(args: argparse.Namespace, settings: Settings) -> tuple[GenerationRequest, str]:
    """The request (:func:`ponybot.options.make_request`, as /generate builds it) and the model source to load
    with --local. ``--model`` names a model of ``[models]``; with --local it may also be a source (a hub id,
    folder, file or tiny) for the default model."""
    name = args.model
    source = None
    if args.local and name is not None and name not in settings.models:
        name, source = None, args.model
    request = make_request(settings, {
        "prompt": args.prompt, "negative_prompt": args.negative, "seed": args.seed, "steps": args.steps,
        "cfg": args.cfg, "size": args.size, "count": args.count, "sampler": args.sampler,
        "clip_skip": args.clip_skip, "speed": args.speed, "model": name,
    })
    return request, source or settings.model_entry(request.model).source


def cli_job_id(job: Job, model: str) -> str:
    """Identical requests get identical ids, so identical runs write byte-identical PNGs."""
    digest = hashlib.sha256(f"{job.request.model_dump_json()}|{job.seed}|{job.quality_tags}|{model}".encode())
    return f"cli-{digest.hexdigest()[:24]}"


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    request, model = request_from_args(args, settings)
    quality = settings.defaults.quality if args.quality is None else args.quality
    fields, pictures = pictures_cli.pictures_from_args(args, settings)
    draft = Job.create(request, quality_tags=quality, **fields)
    digest = hashlib.sha256(b"".join(pictures.values())).hexdigest()[:8] if pictures else ""
    job = pictures_cli.with_keys(draft.model_copy(update={"id": cli_job_id(draft, model) + digest}))
    out_dir = writable_folder(args.out or settings.cli.out_dir, "cli.out_dir (--out)")
    with ExitStack() as stack:
        if args.local:
            # always a private Redis: a shared queue's jobs are never run here, and nobody else runs ours
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ponybot-local-")))
            target = RedisTarget(url=stack.enter_context(EmbeddedRedis(scratch, persistent=False)).url)
        else:
            target = resolve_redis(settings)
        conn = connect(target)
        after = last_event_id(conn)
        worker = settings.worker
        pictures_cli.store(conn, job, pictures, record_ttl(worker.result_ttl_s))
        position = enqueue(conn, job, max_queue=settings.limits.max_queue, result_ttl_s=worker.result_ttl_s,
                           max_attempts=worker.max_attempts)
        log.info("job %s queued at position %d (seed %d)", job.id, position, job.seed)
        if args.local:
            run_local(settings, conn, job, model, stack)
        try:
            # workers started by demand (worker.on_demand): the queued job is what starts one, so wait for it
            patience = math.inf if settings.worker.on_demand and not args.local else settings.cli.no_worker_timeout_s
            event = wait_for_event(conn, job.id, after=after, timeout=None, model=job_model(job),
                                   no_worker_timeout=patience, outage_patience_s=settings.redis.outage_patience_s,
                                   where=target.describe())
        except NoWorkerError:
            cancel_job(conn, job.id)  # nobody would ever read its result
            raise
        if event.kind == "failed":
            raise PonybotError(f"job {job.id} failed: {event.error_message}")
        for image in event.images:
            data = load_image(conn, image.key) if image.key else None
            if data is None:
                raise PonybotError(f"image {image.index} of job {job.id} expired before it was read")
            path = out_dir / f"{job.id}-{image.index}.png"
            path.write_bytes(data)
            say(f"{path}\tseed={image.seed}")
    return 0


def run_local(settings: Settings, conn: redis.Redis, job: Job, model: str, stack: ExitStack) -> None:
    """The job on a worker in this process, on the private Redis; Ctrl-C stops it at once (exit 130)."""
    from worker.runner import run_worker
    from worker.startup import build_runtime

    waiting = generation_queue(conn, job_model(job)).job_ids
    if waiting != [job.id]:  # cannot happen on a private Redis; never run anyone else's job
        raise PonybotError(f"refusing to run: the local queue holds jobs this command did not enqueue ({waiting})")

    def interrupted() -> None:
        logging.disable(logging.CRITICAL)  # RQ's threads would complain about the Redis going away
        stack.close()  # the private Redis and its folder
        complain("interrupted")
        os._exit(EXIT_INTERRUPTED)

    # its speed measured at the job's own size: the job's time limit follows from it
    runtime = build_runtime(settings, conn, model_source=model, models=[job_model(job)],
                            measure_size=(job.request.width, job.request.height))
    runtime.only_jobs = frozenset({job.id})
    run_worker(runtime, burst=True, on_interrupt=interrupted)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from worker.loading import resolve_device
    from worker.runner import run_worker
    from worker.startup import build_runtime

    if args.device:
        try:
            worker = WorkerSettings.model_validate({**settings.worker.model_dump(), "device": args.device})
        except ValidationError as error:
            raise ConfigError(f"worker.device (--device): {error.errors()[0]['msg'].removeprefix('Value error, ')}"
                              f" (got {shorten(args.device)})") from None
        settings = settings.model_copy(update={"worker": worker})
    resolve_device(settings.worker.device)  # a device this machine cannot run: said before anything loads
    port = args.metrics_port if args.metrics_port is not None else settings.metrics.worker_port
    check_port(port, "metrics.worker_port (--metrics-port)")
    conn = connect(resolve_redis(settings))
    models = [name.strip() for name in args.models.split(",") if name.strip()] if args.models else None
    runtime = build_runtime(settings, conn, model_source=args.model, name=args.name, models=models,
                            metrics_port=port)
    run_worker(runtime, burst=args.burst)
    return 0


def cmd_bot(args: argparse.Namespace, settings: Settings) -> int:
    from bot.app import run_bot

    settings.require_discord_token()
    check_port(settings.metrics.bot_port, "metrics.bot_port")
    if warning := settings.gallery.public_url_warning():
        log.warning("%s", warning)
    run_bot(settings)
    return 0


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from ponybot.commands.up import Supervisor

    if args.workers is not None and args.workers < 0:
        raise ConfigError(f"--workers: must be 0 or more, got {args.workers}")
    return Supervisor(settings, config=args.config, workers=args.workers).run()


def cmd_gallery(args: argparse.Namespace, settings: Settings) -> int:
    from gallery.server import run_gallery

    if not settings.gallery.enabled:
        log.warning("gallery.enabled is false: the bot hands no images over; serving what is already kept")
    check_port(settings.gallery.port, "gallery.port", settings.gallery.host, "pick another")
    run_gallery(settings, resolve_redis(settings))
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from ponybot.status import collect_status, describe_status

    say(describe_status(collect_status(connect(resolve_redis(settings)), list(settings.models))))
    return 0


def cmd_policy(args: argparse.Namespace, settings: Settings) -> int:
    policy = resolve(PolicyRules(mode=Mode(args.mode), strictness=Strictness(args.strictness)),
                     age_restricted=args.mode == "nsfw", settings=settings.policy)
    request = build_request(settings.limits, prompt=args.prompt, negative_prompt=args.negative,
                            steps=settings.defaults.steps, count=settings.defaults.count)
    decision = apply(policy, request, quality=settings.defaults.quality, safe_tag=settings.policy.safe_tag)
    refusal = str(decision.reason) if decision.reason else None
    match = decision.match
    matched = ({"list": match.list_name, "entry": match.term, "class": match.cls, "found": match.found}
               if match else None)
    say(json.dumps({"allowed": decision.allowed, "mode": policy.mode.value, "reason": refusal, "matched": matched,
                    "prompt": decision.prompt, "negative_prompt": decision.negative_prompt}, indent=2,
                   ensure_ascii=False))
    return 0 if decision.allowed else EXIT_FAILED


COMMANDS = {"generate": cmd_generate, "worker": cmd_worker, "bot": cmd_bot, "policy": cmd_policy, "up": cmd_up,
            "status": cmd_status, "gallery": cmd_gallery, "styles": styles_cli.cmd_styles,
            "safety": safety_cli.cmd_safety, "invite": invite.cmd_invite,
            "doctor": doctor.cmd_doctor, "init": init_cli.cmd_init}


#: Libraries whose INFO lines describe their own start-up (Alembic lists each plugin it loads).
QUIET_LOGGERS = ("alembic.runtime.plugins",)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as error:
        complain(str(error))
        return EXIT_USAGE
    for warning in unknown_environment(os.environ):
        complain(f"warning: {warning}")
    logging.basicConfig(
        level=args.log_level or settings.log.level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if logging.getLogger().level > logging.DEBUG:  # their INFO is set-up chatter, not news for an operator
        for chatty in QUIET_LOGGERS:
            logging.getLogger(chatty).setLevel(logging.WARNING)
    interrupted = threading.Event()

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        interrupted.set()
        signal.default_int_handler(signum, frame)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        return COMMANDS[args.command](args, settings)
    except KeyboardInterrupt:
        complain("interrupted")
        return EXIT_INTERRUPTED
    except (InvalidRequestError, ConfigError, ModelLoadError, PonybotError, TimeoutError) as error:
        if interrupted.is_set():  # Ctrl-C inside a library (an import, a load) can surface as its own error
            complain("interrupted")
            return EXIT_INTERRUPTED
        complain(str(error))
        if isinstance(error, (InvalidRequestError, ConfigError)):
            return EXIT_USAGE
        return EXIT_CANNOT_START if isinstance(error, ModelLoadError) else EXIT_FAILED
    finally:
        signal.signal(signal.SIGINT, previous)


def run() -> None:
    """The ``ponybot`` command: :func:`main`'s status as the process's exit status.

    The process ends with ``os._exit`` once its output is flushed, skipping the interpreter's finalization:
    every command has closed what it opened by then, and the final garbage collection over torch's and
    diffusers' objects kept a stopped worker alive 20 to 120 s on a busy 2-core machine. After Ctrl-C this
    also keeps the status 130: CPython remembers a KeyboardInterrupt that surfaced inside code an extension
    ran through ``PyRun_*`` during an import (the model loading), even after it was caught and reported here,
    and would then end the process by SIGINT (status -2) instead of 130 (seen in 7 of 30 interrupted loads).
    """
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
