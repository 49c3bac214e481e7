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
    goals = tiny.stdout.split("goals at 2 steps", 1)[1].splitlines()[1:]
    assert [line.split()[0] for line in goals] == ["batch", "best", "best"]
    assert all(line.rstrip().endswith("met") for line in goals)


def test_postprocess_bench_prints_its_tables() -> None:
    result = subprocess.run([sys.executable, "bench/postprocess.py"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    levels = [line.split()[0] for line in result.stdout.splitlines() if line.split()[:1] in (["1"], ["6"])]
    assert levels == ["1", "6"]
    assert "<- ponybot" in result.stdout and "speed-up" in result.stdout
