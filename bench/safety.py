"""The image check's cost on the worker path: images/s on the ``tiny`` model with the tagger on and off.

Both sides run open_nsfw; "on" adds a WD-layout tagger. No tagger can be downloaded here, so by
default it is a stand-in with the WD v3 layout (448x448 NHWC BGR in, 10,861 sigmoid scores out)
whose body is ``--layers`` token-wise MLP blocks of width 768 over 16x16 patches: 18 blocks make
about 67 G multiply-adds per image, some 85% of ViT-B/16's at 448x448 (wd-vit-tagger-v3). Pass
``--tagger FOLDER`` to measure a real one. The tagger runs on onnxruntime's CUDA provider when
installed, else on the CPU, where it competes with the denoising for the same cores.

Run: ``.venv/bin/python bench/safety.py [--layers N] [--jobs N] [--tagger FOLDER]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import machine, table, tiny_bench  # type: ignore[import-not-found]
from PIL import Image
from pipeline import through_ponybot  # type: ignore[import-not-found]

from ponybot.schemas import Job, build_request
from ponybot.settings import SafetySettings
from worker.runtime import WorkerRuntime
from worker.safety import OpenNSFW, SafetyCheck
from worker.tagger import WdTagger, onnx_providers

TAGS = 10861  # wd-vit-tagger-v3's selected_tags.csv: 4 ratings, general and character tags


def stand_in_tagger(folder: Path, layers: int, dim: int = 768, size: int = 448, patch: int = 16) -> Path:
    """A WD-layout ONNX model with a ViT-sized body of random weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    tokens = (size // patch) ** 2
    init = [numpy_helper.from_array((rng.standard_normal((dim, 3, patch, patch)) * 0.01).astype(np.float32), "stem"),
            numpy_helper.from_array(np.array([0, dim, tokens], dtype=np.int64), "shape"),
            numpy_helper.from_array((rng.standard_normal((dim, TAGS)) * 0.01).astype(np.float32), "head")]
    nodes = [helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "stem"], ["patches"], kernel_shape=[patch, patch],
                              strides=[patch, patch]),
             helper.make_node("Reshape", ["patches", "shape"], ["flat"]),
             helper.make_node("Transpose", ["flat"], ["x0"], perm=[0, 2, 1])]
    for i in range(layers):
        init += [numpy_helper.from_array((rng.standard_normal((dim, 4 * dim)) * 0.02).astype(np.float32), f"up{i}"),
                 numpy_helper.from_array((rng.standard_normal((4 * dim, dim)) * 0.02).astype(np.float32), f"down{i}")]
        nodes += [helper.make_node("MatMul", [f"x{i}", f"up{i}"], [f"h{i}"]),
                  helper.make_node("Relu", [f"h{i}"], [f"r{i}"]),
                  helper.make_node("MatMul", [f"r{i}", f"down{i}"], [f"d{i}"]),
                  helper.make_node("Add", [f"x{i}", f"d{i}"], [f"x{i + 1}"])]
    nodes += [helper.make_node("ReduceMean", [f"x{layers}"], ["pooled"], axes=[1], keepdims=0),
              helper.make_node("MatMul", ["pooled", "head"], ["logits"]),
              helper.make_node("Sigmoid", ["logits"], ["output"])]
    graph = helper.make_graph(nodes, "wd-stand-in",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", size, size, 3])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", TAGS])], init)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8),
              folder / "model.onnx")
    names = ["general", "sensitive", "questionable", "explicit"] + [f"tag_{i}" for i in range(TAGS - 4)]
    categories = ["9"] * 4 + ["0"] * (TAGS - 4)
    rows = ["tag_id,name,category,count"] + [f"{i},{n},{c},0" for i, (n, c) in enumerate(zip(names, categories,
                                                                                             strict=True))]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--layers", type=int, default=18, help="MLP blocks of the stand-in tagger (18: ViT-B-sized)")
    parser.add_argument("--tagger", type=Path, help="a real WD tagger folder instead of the stand-in")
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tiny_bench(threads=2) as bench:
        conn, settings, generator = bench.conn, bench.settings, bench.generator
        folder = args.tagger or stand_in_tagger(bench.scratch / "tagger", args.layers)
        safety = SafetySettings(tagger=str(folder))
        opennsfw = OpenNSFW(safety.opennsfw_threshold)
        tagger = WdTagger(folder, safety)
        sides = {"off (open_nsfw only)": SafetyCheck([opennsfw]), "on (tagger + open_nsfw)": SafetyCheck(
            [tagger, opennsfw])}
        runtimes = {name: WorkerRuntime(settings, conn, generator, "bench", check) for name, check in sides.items()}
        sample = [Image.new("RGB", (args.size, args.size), (180, 120, 200))] * 4
        tagger.classify(sample[:1])
        started = time.perf_counter()
        tagger.classify(sample)
        tagger_ms = (time.perf_counter() - started) / len(sample) * 1000
        requests = [build_request(settings.limits, prompt="pinkie pie, balloons", steps=args.steps, width=args.size,
                                  height=args.size, seed=i) for i in range(args.jobs)]
        timings: dict[str, list[float]] = {name: [] for name in sides}
        for round_ in range(args.rounds + 1):  # round 0 warms up; then alternated, best of each
            for name, runtime in runtimes.items():
                batch = requests[:1] if round_ == 0 else requests
                elapsed = through_ponybot(runtime, conn, settings, [Job.create(r) for r in batch])
                if round_:
                    timings[name].append(elapsed)
    rates = {name: args.jobs / min(values) for name, values in timings.items()}
    off, on = rates["off (open_nsfw only)"], rates["on (tagger + open_nsfw)"]
    print(machine())
    print(f"tagger: {folder if args.tagger else f'stand-in, {args.layers} blocks'} on {onnx_providers()[0]}: "
          f"{tagger_ms:.0f} ms per image (batch of 4)")
    print(table(f"tiny model, {args.size}x{args.size}, {args.steps} DDIM steps, {args.jobs} jobs, best of "
                f"{args.rounds} rounds", ["image check", "images/s"], [[n, f"{r:.3f}"] for n, r in rates.items()]))
    print(f"ratio on/off: {on / off:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
