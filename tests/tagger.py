"""A tiny tagger in the WD v3 layout whose scores the test controls through the image's mean colour.

``model.onnx`` takes (N, 64, 64, 3) BGR 0-255 and answers ``mean colour / 255 @ W``: a solid
square image of colour (r, g, b) scores exactly ``r/255 * W[red] + g/255 * W[green] + b/255 *
W[blue]`` for every row of ``selected_tags.csv``. By default red drives ``explicit``, green
``sensitive``, blue the explicit general tag ``nude``, and all three the harmless tag ``pony``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

#: row -> (category, weight of red, green, blue)
DEFAULT_ROWS: dict[str, tuple[int, float, float, float]] = {
    "general": (9, 0.0, 0.0, 0.0),
    "sensitive": (9, 0.0, 1.0, 0.0),
    "questionable": (9, 0.0, 0.0, 0.0),
    "explicit": (9, 1.0, 0.0, 0.0),
    "pony": (0, 0.5, 0.5, 0.5),
    "nude": (0, 0.0, 0.0, 1.0),
    "twilight_sparkle": (4, 0.0, 0.0, 0.0),
}


def make_tagger(folder: Path, rows: dict[str, tuple[int, float, float, float]] | None = None,
                size: int = 64) -> Path:
    import onnx
    from onnx import TensorProto, helper

    rows = rows or DEFAULT_ROWS
    folder.mkdir(parents=True, exist_ok=True)
    weights = np.zeros((3, len(rows)), dtype=np.float32)
    for column, (_category, red, green, blue) in enumerate(rows.values()):
        weights[:, column] = (blue, green, red)  # the input is BGR
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1, 2], keepdims=0),
         helper.make_node("Mul", ["mean", "scale"], ["unit"]),
         helper.make_node("MatMul", ["unit", "w"], ["output"])],
        "wd-tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", size, size, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", len(rows)])],
        [helper.make_tensor("w", TensorProto.FLOAT, [3, len(rows)], weights.flatten().tolist()),
         helper.make_tensor("scale", TensorProto.FLOAT, [], [1 / 255])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8),
              folder / "model.onnx")
    lines = ["tag_id,name,category,count"] + [f"{i},{name},{spec[0]},0" for i, (name, spec) in enumerate(rows.items())]
    (folder / "selected_tags.csv").write_text("\n".join(lines) + "\n")
    return folder


def solid(red: int, green: int, blue: int, side: int = 64) -> Image.Image:
    return Image.new("RGB", (side, side), (red, green, blue))


def save_solid(path: Path, red: int, green: int, blue: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    solid(red, green, blue).save(path)
    return path
