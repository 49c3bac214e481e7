"""The original nsfwjs in node (``tools/nsfwjs/predict.cjs``, @tensorflow/tfjs on its pure-JS cpu backend),
for the tests that prove the shipped ONNX conversion equal to it.

The pinned npm packages come from ``tools/nsfwjs/node_modules`` when ``make nsfwjs-model`` installed them
there, else ``npm ci`` installs them once into a cache folder named for the lock's hash
(``$PONYBOT_NSFWJS_CACHE``, default ``~/.cache/ponybot/nsfwjs``). Without node, or when npm cannot install
them (offline with an empty npm cache), :func:`node_modules` says why and the tests skip with that reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

TOOLS = Path(__file__).resolve().parent.parent / "tools" / "nsfwjs"
INSTALL_TIMEOUT_S = 600
PREDICT_TIMEOUT_S = 600


def node_modules() -> tuple[Path | None, str]:
    """The node_modules folder holding the pinned nsfwjs and tfjs, or None and why not."""
    if shutil.which("node") is None:
        return None, "node is not installed: the comparison with the original nsfwjs needs it"
    local = TOOLS / "node_modules"
    if (local / "nsfwjs").is_dir() and (local / "@tensorflow" / "tfjs").is_dir():
        return local, ""
    if shutil.which("npm") is None:
        return None, f"npm is not installed and {local} is empty: run `make nsfwjs-model` where npm is"
    lock = (TOOLS / "package-lock.json").read_bytes()
    cache = Path(os.environ.get("PONYBOT_NSFWJS_CACHE", Path.home() / ".cache" / "ponybot" / "nsfwjs"))
    folder = cache / hashlib.sha256(lock).hexdigest()[:16]
    if not (folder / "node_modules" / "nsfwjs").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(TOOLS / name, folder / name)
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=folder,
                              capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False)
        if done.returncode != 0:
            return None, f"npm ci of the pinned nsfwjs failed (offline?): {done.stderr.strip()[-300:]}"
    return folder / "node_modules", ""


def predict(modules: Path, folder: Path, batch: np.ndarray[Any, Any] | None,
            images: list[np.ndarray[Any, Any]]) -> dict[str, Any]:
    """nsfwjs's probabilities for a preprocessed float32 batch (fed to its model as is) and for raw uint8
    RGB images (fed through its own ``infer``: scaling and resize included)."""
    request: dict[str, Any] = {"images": []}
    if batch is not None:
        (folder / "batch.f32").write_bytes(np.ascontiguousarray(batch, dtype="<f4").tobytes())
        request["batch"] = {"path": str(folder / "batch.f32"), "shape": list(batch.shape)}
    for index, pixels in enumerate(images):
        path = folder / f"image{index}.rgb"
        path.write_bytes(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
        request["images"].append({"path": str(path), "height": pixels.shape[0], "width": pixels.shape[1]})
    (folder / "request.json").write_text(json.dumps(request))
    done = subprocess.run(["node", str(TOOLS / "predict.cjs"), str(folder / "request.json"),
                           str(folder / "answer.json")],
                          env=dict(os.environ, NSFWJS_MODULES=str(modules)), capture_output=True, text=True,
                          timeout=PREDICT_TIMEOUT_S, check=False)
    assert done.returncode == 0, f"predict.cjs failed: {done.stderr[-2000:]}"
    answer: dict[str, Any] = json.loads((folder / "answer.json").read_text())
    return answer
