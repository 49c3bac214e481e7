"""How many CPUs this process may use, and each worker's share when several share a host."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ponybot.settings import Settings

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def available_cpus(cgroup_cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process may run on: its affinity, lowered to its cgroup's CPU quota (a container's limit)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return max(1, count)
    if quota != "max" and quota.isdigit() and period.isdigit() and int(period) > 0:
        count = min(count, math.ceil(int(quota) / int(period)))
    return max(1, count)


def cpu_share(workers: int, cpus: int | None = None) -> int:
    """Threads for each of ``workers`` workers on one host: an equal share of its CPUs, at least one."""
    return max(1, (cpus if cpus is not None else available_cpus()) // max(1, workers))


def cpu_threads(settings: Settings) -> int:
    """This worker's CPU threads: ``worker.cpu_threads``, else ``OMP_NUM_THREADS`` when set, else every CPU
    its cgroup and affinity allow."""
    if settings.worker.cpu_threads:
        return settings.worker.cpu_threads
    omp = os.environ.get("OMP_NUM_THREADS", "")
    return int(omp) if omp.isdigit() and int(omp) > 0 else available_cpus()
