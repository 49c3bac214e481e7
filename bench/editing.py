"""Seconds per Zoom Out 2x (a 256x256 image on a 512x512 canvas) and per inpaint job at 512x512, on the tiny
model on the CPU: through the worker (job in Redis, A1111's preparation, the pipeline built from the loaded
components, PNG out) against plain diffusers' StableDiffusionInpaintPipeline doing the same denoising, in the
same run.

    .venv/bin/python bench/editing.py [--repeats 3] [--steps 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, table, tiny_bench


def seconds(work: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median and best seconds of ``work`` over ``repeats`` runs (after one warm-up run)."""
    work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times), min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    from ponybot.schemas import (
        GenerationRequest,
        InpaintSpec,
        Job,
        JobKind,
        Margins,
        MaskedContent,
        SourceImage,
        UploadedImage,
    )
    from worker.inpaint import canvas, prepare
    from worker.runtime import WorkerRuntime

    with tiny_bench(args.threads) as bench:
        runtime = WorkerRuntime(bench.settings, bench.conn, bench.generator, "bench-editing")
        plain = StableDiffusionInpaintPipeline.from_pretrained(bench.folder, safety_checker=None,
                                                               requires_safety_checker=False)
        plain.set_progress_bar_config(disable=True)
        picture = Image.effect_mandelbrot((512, 512), (-2, -1.5, 1, 1.5), 60).convert("RGB")
        mask = Image.new("L", (512, 512), 0)
        mask.paste(255, (160, 160, 352, 352))
        for key, image in (("bench:picture", picture), ("bench:mask", mask),
                           ("bench:source", picture.resize((256, 256)))):
            out = io.BytesIO()
            image.save(out, format="PNG")
            bench.conn.set(key, out.getvalue())

        def request(size: int) -> GenerationRequest:
            return GenerationRequest(prompt="pony", steps=args.steps, width=size, height=size, seed=1)

        zoom_spec, margins = InpaintSpec(content=MaskedContent.FILL), Margins(left=128, top=128, right=128, bottom=128)
        zoom = Job.create(request(256), kind=JobKind.OUTPAINT, inpaint=zoom_spec, margins=margins,
                          source=SourceImage(job_id="bench", index=0, seed=1, key="bench:source"))
        inpaint_spec = InpaintSpec(mask_key="bench:mask")
        inpaint = Job.create(request(512), kind=JobKind.INPAINT, inpaint=inpaint_spec,
                             upload=UploadedImage(key="bench:picture", filename="p.png", width=512, height=512,
                                                  strength=0.75))
        zoom_canvas = canvas(picture.resize((256, 256)), margins)
        cases = [("Zoom Out 2x (256 -> 512x512)", zoom, prepare(*zoom_canvas, 512, 512, zoom_spec), 0.8),
                 ("inpaint 512x512, strength 0.75", inpaint, prepare(picture, mask, 512, 512, inpaint_spec), 0.75)]
        rows = []
        for name, job, prepared, strength in cases:
            assert prepared is not None

            def ours(job: Job = job) -> None:
                fresh = job.model_copy(update={"id": uuid.uuid4().hex})  # a published job is never run again
                [event] = runtime.run_batch([fresh])
                assert event.kind == "done", event.error_message

            def theirs(prepared: object = prepared, strength: float = strength) -> None:
                plain("pony", image=prepared.image, mask_image=prepared.mask,  # type: ignore[attr-defined]
                      strength=strength, width=512, height=512, num_inference_steps=args.steps,
                      generator=torch.Generator("cpu").manual_seed(1))

            ours_median, ours_best = seconds(ours, args.repeats)
            plain_median, plain_best = seconds(theirs, args.repeats)
            rows.append((name, f"{ours_median:.2f}", f"{ours_best:.2f}", f"{plain_median:.2f}", f"{plain_best:.2f}",
                         f"{ours_median / plain_median:.2f}"))
    print(machine())
    print(table(f"seconds per job, tiny model, CPU, {args.threads} thread(s), {args.steps} steps, "
                f"median of {args.repeats}",
                ["job", "worker", "worker best", "plain diffusers", "plain best", "worker / plain"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
