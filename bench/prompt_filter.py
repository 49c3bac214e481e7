"""Speed of the SFW prompt check per prompt, over the test corpus (tests/data/prompt_corpus): before and after.

"before" is the filter of another git revision (default ``main``: ``git show main:ponybot/prompt_filter.py``)
with the terms that revision's SFW channels searched (the operator's defaults); "after" is this checkout's filter
with every built-in list, at both strictness levels, and the whole ``policy.apply`` a /generate goes through.
The first check of a process also builds the lists' tables once: that cost is printed on its own.

    python bench/prompt_filter.py [--before main] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import tomllib
import types
from collections.abc import Callable

from common import ROOT, machine, table

from ponybot.policy import PolicyRules, Strictness, apply, resolve
from ponybot.schemas import GenerationRequest
from ponybot.settings import PolicySettings

CORPUS = ROOT / "tests" / "data" / "prompt_corpus"


def corpus() -> list[str]:
    prompts: list[str] = []
    for path in sorted(CORPUS.glob("*.toml")):
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        prompts += [prompt for section in data.values() for group in section.values() for prompt in group]
    return prompts


def old_filter(revision: str) -> types.ModuleType | None:
    """``ponybot/prompt_filter.py`` as ``revision`` has it, imported beside this checkout's (None: no git)."""
    try:
        source = subprocess.run(["git", "show", f"{revision}:ponybot/prompt_filter.py"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"no 'before' row: git show {revision} failed ({error})", file=sys.stderr)
        return None
    module = types.ModuleType(f"prompt_filter_{revision}")
    module.__file__ = f"{revision}:ponybot/prompt_filter.py"
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def per_prompt_us(check: Callable[[str], object], prompts: list[str], repeat: int) -> tuple[float, float]:
    """Median and slowest µs per prompt over ``repeat`` passes (after one warm-up pass)."""
    for prompt in prompts:
        check(prompt)
    passes, slowest = [], 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        for prompt in prompts:
            one = time.perf_counter()
            check(prompt)
            slowest = max(slowest, time.perf_counter() - one)
        passes.append((time.perf_counter() - start) / len(prompts))
    return statistics.median(passes) * 1e6, slowest * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="main", help="the git revision of the 'before' row (default: main)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    prompts = corpus()
    settings = PolicySettings()
    standard = resolve(PolicyRules(), age_restricted=False, settings=settings)
    strict = resolve(PolicyRules(strictness=Strictness.STRICT), age_restricted=False, settings=settings)
    from ponybot import prompt_filter

    start = time.perf_counter()
    prompt_filter.check_prompt("pony", standard.term_lists())
    cold_ms = (time.perf_counter() - start) * 1e3
    rows = []
    old = old_filter(args.before)
    if old is not None:
        terms = list(settings.always_forbidden_terms) + list(settings.sfw_forbidden_terms)
        rows.append((f"before ({args.before}): check_prompt, {len(terms)} terms",
                     *per_prompt_us(lambda p: old.check_prompt(p, terms), prompts, args.repeat)))
    for name, policy in (("standard", standard), ("strict", strict)):
        lists = policy.term_lists()
        entries = sum(len(t.words) + len(t.starts) + len(t.ends) + len(t.phrases) for t in lists)
        rows.append((f"after: check_prompt, {name}, {len(lists)} lists, {entries} entries",
                     *per_prompt_us(lambda p, lists=lists: prompt_filter.check_prompt(p, lists), prompts,
                                    args.repeat)))
    rows.append(("after: policy.apply (the /generate path), standard",
                 *per_prompt_us(lambda p: apply(standard, GenerationRequest(prompt=p), quality=True), prompts,
                                args.repeat)))
    print(machine())
    print(f"{len(prompts)} prompts from {CORPUS.relative_to(ROOT)}; median of {args.repeat} passes")
    print(f"first check of a process (builds the tables of 4 readings once): {cold_ms:.0f} ms")
    print(table("SFW prompt check per prompt", ("filter", "µs/prompt (median)", "slowest prompt µs"),
                [(name, f"{median:.0f}", f"{slowest:.0f}") for name, median, slowest in rows]))


if __name__ == "__main__":
    main()
