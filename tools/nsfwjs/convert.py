"""Convert nsfwjs's bundled MobileNetV2 (a TF.js layers model) to ONNX, the file ``worker.nsfwjs`` loads.

Run by ``make nsfwjs-model`` after ``npm ci`` in this folder: ``node export.cjs`` writes the model as the npm
package holds it (``model.json`` with the Keras layers config and the uint8-quantised weight manifest,
``weights.bin``), and this script builds the same network with ``onnx``'s helpers:

* weights stay uint8 in the file and are dequantised inside the graph exactly as TF.js does it
  (``q * scale + min`` in float64, rounded once to float32); onnxruntime folds that at load time;
* the graph takes the NHWC float batch nsfwjs feeds its model (``[N, 224, 224, 3]``, RGB in [0, 1]) and runs
  NCHW inside; TF's ``same`` padding becomes explicit (asymmetric where TF pads so) pads;
* BatchNormalization stays a BatchNormalization (epsilon from the config), ReLU(max_value=6) is a Clip,
  DepthwiseConv2D a grouped Conv, Dropout is dropped (inference), Dense is a Gemm.

The conversion tools (node, npm, onnx) are not runtime dependencies: only the .onnx file ships.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
OUTPUT = REPO / "worker" / "models" / "nsfwjs_mobilenet_v2.onnx"
OPSET = 17
INPUT, OUTPUT_NAME = "images", "probabilities"


class Builder:
    """Grows one ONNX graph from the Keras layers in config order, tracking each tensor's NCHW shape."""

    def __init__(self, manifest: list[dict[str, Any]], data: bytes) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.shapes: dict[str, tuple[int, int, int]] = {}  # tensor name -> (C, H, W)
        self.weights = read_weights(manifest, data)
        self.counter = 0

    def name(self, base: str) -> str:
        self.counter += 1
        return f"{base}__{self.counter}"

    def constant(self, base: str, value: np.ndarray[Any, Any]) -> str:
        name = self.name(base)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def weight(self, key: str, permute: tuple[int, ...] | None = None, shape: tuple[int, ...] | None = None) -> str:
        """A quantised weight as uint8 initializer plus the nodes that dequantise it as TF.js does."""
        quantised, spec = self.weights.pop(key)
        if shape is not None:
            quantised = quantised.reshape(shape)
        if permute is not None:
            quantised = np.ascontiguousarray(quantised.transpose(permute))
        raw = self.constant(f"{key}/quantised", quantised)
        as_double = self.node("Cast", [raw], key + "/double", to=TensorProto.DOUBLE)
        scaled = self.node("Mul", [as_double, self.constant(key + "/scale", np.array(spec["scale"], np.float64))],
                           key + "/scaled")
        shifted = self.node("Add", [scaled, self.constant(key + "/min", np.array(spec["min"], np.float64))],
                            key + "/shifted")
        return self.node("Cast", [shifted], key, to=TensorProto.FLOAT)

    def node(self, op: str, inputs: list[str], base: str, **attributes: Any) -> str:
        output = self.name(base)
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output


def read_weights(manifest: list[dict[str, Any]], data: bytes) -> dict[str, tuple[np.ndarray[Any, Any], dict[str, Any]]]:
    """Each weight's uint8 values (in Keras layout) and its quantisation, in manifest order from the shards."""
    weights: dict[str, tuple[np.ndarray[Any, Any], dict[str, Any]]] = {}
    offset = 0
    for group in manifest:
        for spec in group["weights"]:
            quantisation = spec.get("quantization") or {}
            if spec["dtype"] != "float32" or quantisation.get("dtype") != "uint8":
                raise SystemExit(f"{spec['name']}: only uint8-quantised float32 weights are handled, not {spec}")
            size = math.prod(spec["shape"])
            values = np.frombuffer(data, np.uint8, size, offset).reshape(spec["shape"])
            weights[spec["name"]] = (values, quantisation)
            offset += size
    if offset != len(data):
        raise SystemExit(f"the manifest covers {offset} bytes of {len(data)}")
    return weights


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF's 'same' padding along one axis: the odd pixel goes after (bottom/right)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv(builder: Builder, layer: dict[str, Any], source: str, depthwise: bool) -> str:
    config, name = layer["config"], layer["name"]
    channels, height, width = builder.shapes[source]
    (kh, kw), (sh, sw) = config["kernel_size"], config["strides"]
    if config["dilation_rate"] != [1, 1] or config["data_format"] != "channels_last":
        raise SystemExit(f"{name}: dilation and channels_first are not handled")
    if config["padding"] == "same":
        (top, bottom), (left, right) = same_pads(height, kh, sh), same_pads(width, kw, sw)
    else:
        top = bottom = left = right = 0
    if depthwise:
        multiplier = config["depth_multiplier"]
        filters, groups = channels * multiplier, channels
        # Keras [kh, kw, in, mult] -> ONNX [in * mult, 1, kh, kw]: output channel i * mult + m
        kernel = builder.weight(f"{name}/depthwise_kernel", (2, 3, 0, 1), (kh, kw, filters, 1))
    else:
        filters, groups = config["filters"], 1
        kernel = builder.weight(f"{name}/kernel", (3, 2, 0, 1))  # [kh, kw, in, out] -> [out, in, kh, kw]
    inputs = [source, kernel]
    if config["use_bias"]:
        inputs.append(builder.weight(f"{name}/bias"))
    output = builder.node("Conv", inputs, name, kernel_shape=[kh, kw], strides=[sh, sw], group=groups,
                          pads=[top, left, bottom, right])
    builder.shapes[output] = (filters, (height + top + bottom - kh) // sh + 1, (width + left + right - kw) // sw + 1)
    return activation(builder, config.get("activation", "linear"), output, name)


def activation(builder: Builder, kind: str, source: str, name: str) -> str:
    if kind == "linear":
        return source
    ops = {"relu": ("Relu", {}), "softmax": ("Softmax", {"axis": -1})}
    if kind not in ops:
        raise SystemExit(f"{name}: activation {kind} is not handled")
    op, attributes = ops[kind]
    output = builder.node(op, [source], f"{name}/{kind}", **attributes)
    if source in builder.shapes:
        builder.shapes[output] = builder.shapes[source]
    return output


def build(model: dict[str, Any], data: bytes) -> onnx.ModelProto:
    topology = model["modelTopology"]["model_config"]
    layers = topology["config"]["layers"]
    builder = Builder(model["weightsManifest"], data)
    tensors: dict[str, str] = {}  # Keras layer name -> its output tensor in the graph
    flat: set[str] = set()  # tensors already [N, features]
    size = 0
    for layer in layers:
        kind, name, config = layer["class_name"], layer["name"], layer["config"]
        sources = [tensors[inbound[0]] for inbound in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
        source = sources[0] if sources else ""
        if kind == "InputLayer":
            _, size, width, channels = config["batch_input_shape"]
            if size != width or channels != 3:
                raise SystemExit(f"input {config['batch_input_shape']}: a square RGB input is expected")
            output = builder.node("Transpose", [INPUT], "to_nchw", perm=[0, 3, 1, 2])
            builder.shapes[output] = (3, size, size)
        elif kind == "ZeroPadding2D":
            (top, bottom), (left, right) = config["padding"]
            pads = builder.constant(f"{name}/pads", np.array([0, 0, top, left, 0, 0, bottom, right], np.int64))
            output = builder.node("Pad", [source, pads], name, mode="constant")
            channels, height, width = builder.shapes[source]
            builder.shapes[output] = (channels, height + top + bottom, width + left + right)
        elif kind in ("Conv2D", "DepthwiseConv2D"):
            output = conv(builder, layer, source, kind == "DepthwiseConv2D")
        elif kind == "BatchNormalization":
            if config["axis"] not in (-1, 3) or not config["center"] or not config["scale"]:
                raise SystemExit(f"{name}: only channel-axis BatchNormalization with center and scale is handled")
            parts = [builder.weight(f"{name}/{part}") for part in ("gamma", "beta", "moving_mean", "moving_variance")]
            output = builder.node("BatchNormalization", [source, *parts], name, epsilon=float(config["epsilon"]))
            builder.shapes[output] = builder.shapes[source]
        elif kind == "ReLU":
            if config.get("negative_slope", 0) or config.get("threshold", 0):
                raise SystemExit(f"{name}: a leaky or thresholded ReLU is not handled")
            if config.get("max_value") is None:
                output = builder.node("Relu", [source], name)
            else:
                bounds = [builder.constant(f"{name}/{end}", np.array(value, np.float32))
                          for end, value in (("min", 0.0), ("max", float(config["max_value"])))]
                output = builder.node("Clip", [source, *bounds], name)
            builder.shapes[output] = builder.shapes[source]
        elif kind == "Add":
            output = builder.node("Add", sources, name)
            builder.shapes[output] = builder.shapes[sources[0]]
        elif kind == "AveragePooling2D":
            (kh, kw), (sh, sw) = config["pool_size"], config["strides"]
            if config["padding"] != "valid":
                raise SystemExit(f"{name}: only valid pooling is handled")
            output = builder.node("AveragePool", [source], name, kernel_shape=[kh, kw], strides=[sh, sw])
            channels, height, width = builder.shapes[source]
            builder.shapes[output] = (channels, (height - kh) // sh + 1, (width - kw) // sw + 1)
        elif kind == "Flatten":  # Keras flattens NHWC: go back to it first
            nhwc = builder.node("Transpose", [source], f"{name}/nhwc", perm=[0, 2, 3, 1])
            output = builder.node("Flatten", [nhwc], name, axis=1)
            flat.add(output)
        elif kind == "Dense":
            if source not in flat:
                raise SystemExit(f"{name}: Dense is handled only after Flatten")
            inputs = [source, builder.weight(f"{name}/kernel")]
            if config["use_bias"]:
                inputs.append(builder.weight(f"{name}/bias"))
            output = activation(builder, config["activation"], builder.node("Gemm", inputs, name), name)
            flat.add(output)
        elif kind == "Dropout":  # identity at inference
            output = source
            flat.update([output] if source in flat else [])
        else:
            raise SystemExit(f"{name}: layer {kind} is not handled")
        tensors[name] = output
    if builder.weights:
        raise SystemExit(f"weights no layer used: {sorted(builder.weights)}")
    (last,) = topology["config"]["output_layers"]
    builder.nodes.append(helper.make_node("Identity", [tensors[last[0]]], [OUTPUT_NAME], name=OUTPUT_NAME))
    graph = helper.make_graph(
        builder.nodes, "nsfwjs_mobilenet_v2",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", size, size, 3])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 5])],
        builder.initializers)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   producer_name="ponybot tools/nsfwjs/convert.py")
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def export(modules: Path | None, folder: Path) -> None:
    """Run export.cjs (node) to write model.json, weights.bin and versions.json into folder."""
    env = None
    if modules is not None:
        import os

        env = dict(os.environ, NSFWJS_MODULES=str(modules))
    subprocess.run(["node", str(HERE / "export.cjs"), str(folder)], check=True, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", type=Path, help="node_modules holding nsfwjs (default: tools/nsfwjs/)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        export(args.modules, folder)
        model = json.loads((folder / "model.json").read_text())
        data = (folder / "weights.bin").read_bytes()
        versions = json.loads((folder / "versions.json").read_text())
    onnx_model = build(model, data)
    encoded = onnx_model.SerializeToString()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(encoded)
    source = {
        "source": "npm nsfwjs (MIT), dist/models/mobilenet_v2",
        "nsfwjs": versions["nsfwjs"],
        "converted_with": {"@tensorflow/tfjs": versions["@tensorflow/tfjs"], "onnx": onnx.__version__},
        "opset": OPSET,
        "classes": ["Drawing", "Hentai", "Neutral", "Porn", "Sexy"],
        "input": f"{INPUT}: float32 [N, 224, 224, 3], RGB in [0, 1] (NHWC, as nsfwjs feeds its model)",
        "source_sha256": hashlib.sha256(json.dumps(model, sort_keys=True).encode() + data).hexdigest(),
        "onnx_sha256": hashlib.sha256(encoded).hexdigest(),
        "onnx_bytes": len(encoded),
    }
    args.output.with_suffix(".json").write_text(json.dumps(source, indent=2) + "\n")
    print(f"{args.output}: {len(encoded) / 1e6:.2f} MB, opset {OPSET}, nsfwjs {versions['nsfwjs']}, "
          f"{len(onnx_model.graph.node)} nodes, sha256 {source['onnx_sha256'][:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
