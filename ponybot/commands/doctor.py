"""``ponybot doctor``: one line per check, a mark, and for each problem what to do about it.

Exit 0 when every check passes, 1 otherwise; ``--json`` for scripts. Each check runs with a time limit in a
thread of its own and never lets a traceback out: a check that raises or does not answer in time is a
problem line like any other. The local checks are in :mod:`ponybot.commands.doctor_checks`; the Discord checks (with
a token) in ``ponybot/commands/doctor_discord.py``, imported only then (the contract package never loads discord.py).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from ponybot.commands.findings import DEFAULT_MIN_FREE_GB, Finding, Options
from ponybot.settings import Settings

log = logging.getLogger(__name__)

#: Seconds each check may take (the torch import can take long on a busy host).
CHECK_LIMIT_S = 20.0
TORCH_LIMIT_S = 120.0


Check = Callable[[Settings, Options], list[Finding]]


def add_parser(commands: Any) -> None:
    doctor = commands.add_parser(
        "doctor", help="check the set-up: config, Redis, models, GPU, disk, gallery, Discord",
        description="Check the set-up, one line per check, and say what to do about each problem. "
                    "Exit 0 when all pass, 1 otherwise.")
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON (for scripts)")
    doctor.add_argument("--min-free-gb", type=float, default=DEFAULT_MIN_FREE_GB,
                        help=f"free disk each data folder needs, in GB (default: {DEFAULT_MIN_FREE_GB:g})")


def run_check(check: Check, settings: Settings, options: Options, name: str, limit_s: float) -> list[Finding]:
    """Run one check in a thread with a time limit; an error or no answer becomes a problem finding."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"doctor-{name}")
    future = pool.submit(check, settings, options)
    try:
        return future.result(timeout=limit_s)
    except concurrent.futures.TimeoutError:
        return [Finding(name, False, f"no answer within {limit_s:g} s", "see what the check waits on (a host, a "
                                                                          "disk) and run ponybot doctor again")]
    except Exception as error:  # a check's own bug or an unexpected library error: a line, never a traceback
        log.debug("check %s failed", name, exc_info=True)
        return [Finding(name, False, f"{type(error).__name__}: {error}", "report this check's failure")]
    finally:
        pool.shutdown(wait=False)


def checks(settings: Settings) -> list[tuple[str, Check, float]]:
    from ponybot.commands import doctor_checks as local

    found: list[tuple[str, Check, float]] = [
        ("config", local.config, CHECK_LIMIT_S),
        ("redis", local.redis_server, CHECK_LIMIT_S),
        ("models", local.models, CHECK_LIMIT_S),
        ("torch", local.torch_build, TORCH_LIMIT_S),
        ("disk", local.disk, CHECK_LIMIT_S),
        ("gallery", local.gallery_database, CHECK_LIMIT_S),
    ]
    if settings.discord.token is not None and settings.discord.token.get_secret_value():
        from ponybot.commands.doctor_discord import discord_checks

        found.append(("discord", discord_checks, CHECK_LIMIT_S * 3))
    return found


def diagnose(settings: Settings, options: Options) -> list[Finding]:
    return [finding for name, check, limit in checks(settings)
            for finding in run_check(check, settings, options, name, limit)]


def cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    findings = diagnose(settings, Options(min_free_gb=args.min_free_gb))
    healthy = all(finding.ok for finding in findings)
    if args.json:
        sys.stdout.write(json.dumps({"ok": healthy, "checks": [asdict(f) for f in findings]}, indent=2) + "\n")
    else:
        for finding in findings:
            sys.stdout.write(finding.line() + "\n")
        problems = sum(not finding.ok for finding in findings)
        sys.stdout.write("all checks pass\n" if healthy else f"{problems} problem(s)\n")
    return 0 if healthy else 1
