"""The GPU benchmark must stay runnable: it skips cleanly without a GPU and its code runs on the tiny model."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_gpu_bench_skips_without_cuda_and_runs_tiny_on_cpu() -> None:
    skipped = subprocess.run([sys.executable, "bench/gpu.py"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert skipped.returncode == 0
    assert "no CUDA device" in skipped.stdout
    tiny = subprocess.run([sys.executable, "bench/gpu.py", "--device", "cpu", "--tiny", "--steps", "2",
                           "--batches", "1,2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert tiny.returncode == 0, tiny.stderr
    rows = [line for line in tiny.stdout.splitlines() if line.startswith(("plain diffusers", "ponybot worker"))]
    assert len(rows) == 4
