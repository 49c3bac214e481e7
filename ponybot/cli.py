"""The ``ponybot`` command. Each subcommand imports its side (bot or worker) only when run."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from ponybot import __version__, safety_cli, styles_cli
from ponybot.errors import ConfigError, InvalidRequestError, NoWorkerError, PonybotError
from ponybot.policy import Mode, PolicyRules, apply, resolve
from ponybot.queue import cancel_job, connect, enqueue, last_event_id, load_image, resolve_redis, wait_for_event
from ponybot.redis_server import EmbeddedRedis, running_embedded_url
from ponybot.schemas import GenerationRequest, Job, Sampler, Speed, build_request, parse_size
from ponybot.settings import Settings, load_settings

log = logging.getLogger("ponybot")

EXIT_FAILED = 1
EXIT_USAGE = 2


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ponybot", description="pony-diffusion on Discord, with GPU workers.")
    parser.add_argument("--config", help="settings file (default: $PONYBOT_CONFIG, else ./config.toml)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="overrides log.level")
    parser.add_argument("--version", action="version", version=f"ponybot {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = commands.add_parser("worker", help="run a GPU worker: load the model, then take jobs")
    worker.add_argument("--device", help="cpu, cuda, cuda:N (overrides worker.device)")
    worker.add_argument("--models", help="comma-separated model names from [models] to hold (default: model.default)")
    worker.add_argument("--model", help="model source of the (first) model held (overrides its source)")
    worker.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    worker.add_argument("--name", help="worker name shown in status and logs (default: host, device, random)")
    worker.add_argument("--metrics-port", type=int, help="Prometheus port (overrides metrics.worker_port)")

    generate = commands.add_parser("generate", help="generate images through the queue, without Discord")
    generate.add_argument("prompt")
    generate.add_argument("--negative", help="negative prompt")
    generate.add_argument("--seed", type=int, help="0..4294967295 (default: random, always printed)")
    generate.add_argument("--steps", type=int)
    generate.add_argument("--cfg", type=float)
    generate.add_argument("--size", help="WIDTHxHEIGHT, multiples of 64 from 256 to 1024")
    generate.add_argument("--count", type=int)
    generate.add_argument("--sampler", help=", ".join(s.value for s in Sampler))
    generate.add_argument("--clip-skip", type=int, help="1 = last CLIP layer, 2 = penultimate (A1111's convention)")
    generate.add_argument("--quality", action="store_true", help="add the model card's quality tags")
    generate.add_argument("--speed", help="normal, or fast: DeepCache feature reuse (quicker, a little less detail)")
    generate.add_argument("--model", help="model source for --local (overrides model.source)")
    generate.add_argument("--out", type=Path, help="output folder (default: cli.out_dir)")
    generate.add_argument("--local", action="store_true", help="run a worker in this process")

    commands.add_parser("bot", help="run the Discord bot")

    up = commands.add_parser("up", help="one machine: embedded Redis, a worker per GPU, and the bot")
    up.add_argument("--workers", type=int, help="how many workers (default: one per visible GPU, else one on CPU)")

    commands.add_parser("status", help="workers, queue depth, throughput and current wait")

    commands.add_parser("gallery", help="run the community gallery: its web site and the loop that stores images")

    policy = commands.add_parser("policy", help="try the channel policy's rules")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    check = policy_commands.add_parser("check", help="what the policy does with a prompt (JSON; exit 1 if refused)")
    check.add_argument("prompt")
    check.add_argument("--mode", choices=["sfw", "nsfw"], default="sfw",
                       help="nsfw: as in an age-restricted channel whose policy allows NSFW")
    check.add_argument("--negative", default="", help="the member's negative prompt")
    styles_cli.add_parser(commands)
    safety_cli.add_parser(commands)
    return parser


def request_from_args(args: argparse.Namespace, settings: Settings) -> GenerationRequest:
    defaults = settings.defaults
    try:
        width, height = parse_size(args.size or defaults.size)
    except ValueError as error:
        raise InvalidRequestError("size", str(error)) from None
    sampler = args.sampler or defaults.sampler.value
    if sampler not in {s.value for s in Sampler}:
        raise InvalidRequestError("sampler", f"must be one of {', '.join(s.value for s in Sampler)}, got {sampler!r}")
    entry = settings.model_entry(None)  # the default model's own defaults first
    negative = defaults.negative_prompt if entry.negative_prompt is None else entry.negative_prompt
    return build_request(
        settings.limits,
        prompt=args.prompt,
        negative_prompt=args.negative if args.negative is not None else negative,
        steps=args.steps if args.steps is not None else defaults.steps,
        cfg=args.cfg if args.cfg is not None else defaults.cfg,
        width=width,
        height=height,
        count=args.count if args.count is not None else defaults.count,
        seed=args.seed,
        sampler=sampler,
        clip_skip=args.clip_skip if args.clip_skip is not None else entry.clip_skip or defaults.clip_skip,
        model=settings.default_model,
        speed=args.speed or Speed.NORMAL.value,
    )


def cli_job_id(job: Job, model: str) -> str:
    """Identical requests get identical ids, so identical runs write byte-identical PNGs."""
    digest = hashlib.sha256(f"{job.request.model_dump_json()}|{job.seed}|{job.quality_tags}|{model}".encode())
    return f"cli-{digest.hexdigest()[:24]}"


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    request = request_from_args(args, settings)
    model = args.model or settings.model_entry(None).source
    draft = Job.create(request, quality_tags=args.quality)
    job = draft.model_copy(update={"id": cli_job_id(draft, model)})
    out_dir: Path = args.out or settings.cli.out_dir
    with ExitStack() as stack:
        url = settings.redis.url or running_embedded_url(settings.redis.embedded_dir)
        if url is None and args.local and not settings.redis.sentinels:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ponybot-redis-")))
            url = stack.enter_context(EmbeddedRedis(scratch, persistent=False)).url
        conn = connect(url if url and not settings.redis.sentinels else resolve_redis(settings))
        after = last_event_id(conn)
        worker = settings.worker
        position = enqueue(conn, job, max_queue=settings.limits.max_queue, result_ttl_s=worker.result_ttl_s,
                           max_attempts=worker.max_attempts)
        log.info("job %s queued at position %d (seed %d)", job.id, position, job.seed)
        if args.local:
            from worker.runner import run_worker
            from worker.runtime import build_runtime

            run_worker(build_runtime(settings, conn, model_source=model, measure_size=(request.width, request.height)),
                       burst=True)
        try:
            event = wait_for_event(conn, job.id, after=after, timeout=None, model=settings.default_model,
                                   no_worker_timeout=settings.cli.no_worker_timeout_s)
        except NoWorkerError:
            cancel_job(conn, job.id)  # nobody would ever read its result
            raise
        if event.kind == "failed":
            raise PonybotError(f"job {job.id} failed: {event.error_message}")
        out_dir.mkdir(parents=True, exist_ok=True)
        for image in event.images:
            data = load_image(conn, image.key) if image.key else None
            if data is None:
                raise PonybotError(f"image {image.index} of job {job.id} expired before it was read")
            path = out_dir / f"{job.id}-{image.index}.png"
            path.write_bytes(data)
            say(f"{path}\tseed={image.seed}")
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from worker.runner import run_worker
    from worker.runtime import build_runtime

    if args.device:
        settings = settings.model_copy(update={"worker": settings.worker.model_copy(update={"device": args.device})})
    conn = connect(resolve_redis(settings))
    models = [name.strip() for name in args.models.split(",") if name.strip()] if args.models else None
    runtime = build_runtime(settings, conn, model_source=args.model, name=args.name, models=models,
                            metrics_port=args.metrics_port if args.metrics_port is not None
                            else settings.metrics.worker_port)
    run_worker(runtime, burst=args.burst)
    return 0


def cmd_bot(args: argparse.Namespace, settings: Settings) -> int:
    from bot.app import run_bot

    run_bot(settings)
    return 0


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from ponybot.up import Supervisor

    return Supervisor(settings, config=args.config, workers=args.workers).run()


def cmd_gallery(args: argparse.Namespace, settings: Settings) -> int:
    from gallery.server import run_gallery

    if not settings.gallery.enabled:
        log.warning("gallery.enabled is false: the bot hands no images over; serving what is already kept")
    run_gallery(settings, resolve_redis(settings))
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from ponybot.status import collect_status, describe_status

    say(describe_status(collect_status(connect(resolve_redis(settings)), list(settings.models))))
    return 0


def cmd_policy(args: argparse.Namespace, settings: Settings) -> int:
    policy = resolve(PolicyRules(mode=Mode(args.mode)), age_restricted=args.mode == "nsfw", settings=settings.policy)
    request = build_request(settings.limits, prompt=args.prompt, negative_prompt=args.negative,
                            steps=settings.defaults.steps, count=settings.defaults.count)
    decision = apply(policy, request, quality=settings.defaults.quality, safe_tag=settings.policy.safe_tag)
    say(json.dumps({"allowed": decision.allowed, "mode": policy.mode.value, "reason": decision.reason,
                    "prompt": decision.prompt, "negative_prompt": decision.negative_prompt}, indent=2,
                   ensure_ascii=False))
    return 0 if decision.allowed else EXIT_FAILED


COMMANDS = {"generate": cmd_generate, "worker": cmd_worker, "bot": cmd_bot, "policy": cmd_policy, "up": cmd_up,
            "status": cmd_status, "gallery": cmd_gallery, "styles": styles_cli.cmd_styles,
            "safety": safety_cli.cmd_safety}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as error:
        sys.stderr.write(f"ponybot: {error}\n")
        return EXIT_USAGE
    logging.basicConfig(
        level=args.log_level or settings.log.level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return COMMANDS[args.command](args, settings)
    except (InvalidRequestError, ConfigError) as error:
        sys.stderr.write(f"ponybot: {error}\n")
        return EXIT_USAGE
    except (PonybotError, TimeoutError) as error:
        sys.stderr.write(f"ponybot: {error}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
