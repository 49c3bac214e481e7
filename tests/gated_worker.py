"""``ponybot worker`` whose every generation first waits for a file to exist.

A job on such a worker is surely mid-run (started, not finished) until the test opens the gate,
however fast or slow the machine: what killing or stopping a worker mid-job needs. Everything
else is the real worker. Usage: ``python -m tests.gated_worker GATE_FILE worker [options]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from ponybot.commands.cli import run
from worker.generate import Generator

#: A gate nobody opens within this is a broken test: fail the job rather than hang.
GATE_DEADLINE_S = 900.0


def arrived(gate: Path) -> Path:
    """The file a worker makes when a generation reaches its gate (``GATE.waiting``)."""
    return gate.with_name(gate.name + ".waiting")


def gated(gate: Path) -> None:
    real = Generator.generate_deferred  # what the worker calls (generate_batch too): the GPU stage of a batch

    def generate_deferred(self: Generator, *args: Any, **kwargs: Any) -> Any:
        arrived(gate).touch()  # the job is surely mid-run now: its bookkeeping before the generation is done
        deadline = time.monotonic() + GATE_DEADLINE_S
        while not gate.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"nobody opened the gate {gate}")
            time.sleep(0.05)
        return real(self, *args, **kwargs)

    Generator.generate_deferred = generate_deferred  # type: ignore[method-assign]


if __name__ == "__main__":
    gated(Path(sys.argv[1]))
    del sys.argv[1]  # the rest is the ponybot command line, which the ponybot command itself runs
    run()
