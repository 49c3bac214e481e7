"""The GPU benchmark must stay runnable: it skips cleanly without a GPU and its code runs on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.mark.timeout(600)  # six paths x two batch sizes, each warmed up twice: a minute here, more on a busy VM
def test_gpu_bench_skips_without_cuda_and_runs_tiny_on_cpu(tmp_path: Path) -> None:
    skipped = subprocess.run([sys.executable, "bench/gpu.py"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert skipped.returncode == 0
    assert "no CUDA device" in skipped.stdout
    env = {**os.environ, "OUT": str(tmp_path)}
    tiny = subprocess.run([sys.executable, "bench/gpu.py", "--device", "cpu", "--tiny", "--steps", "1",
                           "--batches", "1,2", "--rounds", "1", "--budget-s", "3000"],
                          cwd=ROOT, capture_output=True, text=True, timeout=540, env=env)
    assert tiny.returncode == 0, tiny.stderr
    table = tiny.stdout.split("best of 1 round(s)", 1)[1]
    rows = {(line[:26].strip(), int(line[26:32])) for line in table.splitlines()
            if line.startswith(("plain diffusers", "ponybot"))}
    assert rows == {(path, batch) for path in ("plain diffusers eager", "ponybot eager", "ponybot worker path")
                    for batch in (1, 2)}
    assert "compiled paths: CUDA only, not run here" in tiny.stdout
    records = [json.loads(line) for line in (tmp_path / "gpu_bench.jsonl").read_text().splitlines()]
    measured = {(r["path"], r["batch"]) for r in records if "path" in r}
    assert measured == rows  # each result was written out as it came
    assert {r["round"] for r in records if "round" in r} == {0, 1}
    assert (tmp_path / "gpu_bench_table.txt").read_text().count("ponybot worker path") == 2


def test_gpu_bench_skips_a_compile_that_cannot_fit(tmp_path: Path) -> None:
    """The budget holds: with no time left for anything, every path is skipped and reported, and it exits 0."""
    env = {**os.environ, "OUT": str(tmp_path)}
    result = subprocess.run([sys.executable, "bench/gpu.py", "--device", "cpu", "--tiny", "--steps", "1",
                             "--batches", "1", "--budget-s", "0"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert "skipped plain diffusers eager at batch 1" in result.stdout
    notes = [json.loads(line).get("note", "") for line in (tmp_path / "gpu_bench.jsonl").read_text().splitlines()]
    assert any(note.startswith("skipped ponybot eager at batch 1") for note in notes)


def test_gallery_bench_prints_both_settings() -> None:
    """Small (300 rows, 160 requests a round): the script keeps running; its figures come from full runs."""
    result = subprocess.run([sys.executable, "bench/gallery.py", "--rows", "300", "--requests", "160"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for cache_s in ("2", "0"):
        for clients in (1, 32):
            assert f"gallery.public_cache_s = {cache_s}: {clients} concurrent client(s), 160 requests" in result.stdout
        assert f"public_cache_s = {cache_s}: list pages p99 under 32 clients" in result.stdout
    # the fill is one visitors may see (SFW channels open to @everyone): about 7 in 10 image pages are shown
    shown = [tuple(map(int, line.split(": ")[1].split(" of "))) for line in result.stdout.splitlines()
             if line.startswith("image pages shown signed out: ")]
    assert len(shown) == 4 and all(total > 0 and found > total // 4 for found, total in shown), shown


def test_postprocess_bench_prints_its_tables() -> None:
    result = subprocess.run([sys.executable, "bench/postprocess.py"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    levels = [line.split()[0] for line in result.stdout.splitlines() if line.split()[:1] in (["1"], ["6"])]
    assert levels == ["1", "6"]
    assert "<- ponybot" in result.stdout and "speed-up" in result.stdout
    checks = [line.split()[0] for line in result.stdout.split("ms/image at batch 8")[1].splitlines()[2:]]
    assert checks == ["nsfwjs", "opennsfw", "all"]


def test_prompt_filter_bench_prints_before_and_after() -> None:
    result = subprocess.run([sys.executable, "bench/prompt_filter.py", "--repeat", "1"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line.split("  ")[0] for line in result.stdout.splitlines() if line.startswith(("before", "after"))]
    assert [row.split(":")[0] for row in rows][-3:] == ["after", "after", "after"], result.stdout
    assert "before (main)" in result.stdout or "no 'before' row" in result.stderr


@pytest.mark.timeout(600)
def test_overlap_bench_prints_both_loops() -> None:
    """bench/overlap.py runs (its figures are quoted in the notes, measured on a quiet machine, not here)."""
    result = subprocess.run([sys.executable, "bench/overlap.py", "--jobs", "2", "--steps", "2", "--rounds", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stderr
    rows = [line.split()[:2] for line in result.stdout.splitlines()
            if "one after another" in line or "post stage" in line]
    assert rows == [["0", "one"], ["1", "post"], ["2", "post"]]
    assert "goal >= 1.8x:" in result.stdout



def table_rows(out: str, title: str) -> list[list[str]]:
    """The rows of the table printed under ``title`` (after its header and rule), split into cells."""
    lines = out.split(title, 1)[1].splitlines()[3:]
    return [line.split() for line in lines[: next((i for i, line in enumerate(lines) if not line.strip()), None)]]


@pytest.mark.timeout(600)
def test_scale_bench_prints_every_table() -> None:
    """bench/scale.py small: every table comes out, the positions it read were right (it asserts them), and
    the stub workers finished every job (its figures come from full runs, quoted in docs/scale.md)."""
    result = subprocess.run([sys.executable, "bench/scale.py", "--queued", "50,200", "--tracked", "10,50",
                             "--bursts", "10", "--workers", "1,2", "--jobs", "30", "--e2e-jobs", "5",
                             "--members", "3", "--samples", "50", "--ticks", "3"],
                            cwd=ROOT, capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("machine (at start)") == 1 and out.count("machine (at end)") == 1
    assert [row[:2] for row in table_rows(out, "as the queue grows")] == [["50", "50"], ["200", "50"]]
    assert [row[:2] for row in table_rows(out, "tracker tick")] == [["50", "10"], ["50", "50"], ["200", "10"],
                                                                     ["200", "50"]]
    workers = table_rows(out, "jobs/s through stub workers")
    assert [row[:2] for row in workers] == [["1", "30"], ["2", "30"]]
    assert all(float(cpu) > 0 for row in workers for cpu in row[5:7])  # each side's CPU per job was read back
    startups = table_rows(out, "worker start-up")
    assert [row[:2] for row in startups] == [["1", "ponybot"], ["1", "plain"], ["2", "ponybot"], ["2", "plain"]]
    assert all(float(row[2]) > 0 for row in startups if row[1] == "ponybot")  # a worker's imports take time
    left = {row[0]: row[1] for row in table_rows(out, "what 30 finished jobs leave in Redis")}
    assert left["ponybot:image:<id>:0"] == left["ponybot:job:<id>"] == "30"
    assert [row[0] for row in table_rows(out, "INTERACTION_CREATE -> defer callback")] == ["10"]
    per_job = table_rows(out, "Redis per job end to end (5 jobs")
    assert len(per_job) == 1 and float(per_job[0][0]) > 0
    assert "Redis memory per queued job" in out and "Redis memory per finished job" in out


def test_gallery_flood_bench_prints_both_modes() -> None:
    """Small (2 MiB bodies): both rows come out; the limited site refuses the flooded POSTs with 413 and the same
    app without BodyLimit never does (it reads the bodies)."""
    result = subprocess.run([sys.executable, "bench/gallery_flood.py", "--bytes", str(2 << 20), "--clients", "8"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "8 clients x 6 POST routes" in result.stdout
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()
            if line.startswith(("unlimited ", "limited "))}
    assert set(rows) == {"unlimited", "limited"}
    answers = {mode: dict(part.split("x") for part in row[2:-7]) for mode, row in rows.items()}
    # limited: refused from the headers or the first bytes (413; a multipart file part may be refused first, 400)
    assert set(answers["limited"]) <= {"413", "400"} and int(answers["limited"]["413"]) >= 40, answers
    assert "413" not in answers["unlimited"], answers
    for row in rows.values():
        assert row[1] == "48" and sum(map(int, answers[row[0]].values())) == 48, row
        assert all(float(cell.replace(",", "")) > 0 for cell in row[-6:]), "RSS and free disk are read"
