"""nsfwjs as ONNX: the shipped file is what the conversion script makes of the pinned npm package, and it
answers what the original answers in node (@tensorflow/tfjs, cpu backend) on the same images, within 1e-4
per class: once on the same preprocessed tensor (the model), once from raw pixels (preprocessing too)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from ponybot.settings import SafetySettings
from tests.nsfwjs_node import TOOLS, node_modules, predict
from worker.nsfwjs import CLASSES, MODEL, NsfwJs, pixels, prepare

TOLERANCE = 1e-4
ROOT = Path(__file__).resolve().parent.parent


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """A smooth gradient with grain: shading like a photograph's."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), (x + y) / max(width + height - 2, 1)], -1)
    noisy = base * 200 + 30 + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1))


def drawing(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    """Flat colours and outlines: a cartoon."""
    image = Image.new("RGB", (width, height), ((seed * 70) % 256, 220, 240))
    draw = ImageDraw.Draw(image)
    for i in range(12):
        x, y, r = (seed * 37 + i * 53) % width, (seed * 11 + i * 71) % height, 10 + (i * 13) % max(width // 4, 11)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=((i * 90) % 256, (i * 40 + seed) % 256, (i * 150) % 256),
                     outline=(0, 0, 0), width=3)
    return image.convert(mode)


def noise(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def rgba(width: int, height: int, seed: int) -> Image.Image:
    """A drawing whose alpha varies: nsfwjs reads the RGB under it, alpha dropped."""
    image = drawing(width, height, seed).convert("RGBA")
    alpha = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    image.putalpha(Image.fromarray(alpha))
    return image


IMAGES: dict[str, Image.Image] = {
    "photo-like 512x512": photo_like(512, 512, 1),
    "photo-like 640x427": photo_like(640, 427, 2),
    "drawing 512x768": drawing(512, 768, 3),
    "drawing 224x224 (no resize)": drawing(224, 224, 4),
    "drawing palette 300x200": drawing(300, 200, 5, "P"),
    "noise 256x256": noise(256, 256, 6),
    "noise 1x1": noise(1, 1, 7),
    "odd 3x500": photo_like(3, 500, 8),
    "odd 225x223": drawing(225, 223, 9),
    "odd 1000x37": noise(1000, 37, 10),
    "RGBA 320x240": rgba(320, 240, 11),
    "greyscale L 200x300": photo_like(200, 300, 12).convert("L"),
    "greyscale LA 128x128": drawing(128, 128, 13).convert("LA"),
}


@pytest.fixture(scope="module")
def modules() -> Path:
    found, why = node_modules()
    if found is None:
        pytest.skip(why)
    return found


@pytest.fixture(scope="module")
def model() -> NsfwJs:
    return NsfwJs(SafetySettings(), threads=1)


@pytest.fixture(scope="module")
def original(modules: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """nsfwjs in node, once for both comparisons: the preprocessed batch, and the raw pixels through infer()."""
    batch = np.stack([prepare(image) for image in IMAGES.values()])
    answer = predict(modules, tmp_path_factory.mktemp("nsfwjs"), batch, [pixels(image) for image in IMAGES.values()])
    answer["sent"] = batch
    return answer


def per_class(ours: np.ndarray[Any, Any], theirs: np.ndarray[Any, Any]) -> dict[str, float]:
    return {name: float(np.max(np.abs(ours[:, i] - theirs[:, i]))) for i, name in enumerate(CLASSES)}


def test_onnx_model_equals_tfjs_on_the_same_tensor(original: dict[str, Any], model: NsfwJs) -> None:
    theirs = np.asarray(original["batch"], dtype=np.float64)
    ours = model.run(original["sent"]).astype(np.float64)
    assert ours.shape == theirs.shape == (len(IMAGES), 5)
    differences = per_class(ours, theirs)
    print("max abs difference per class, same tensor:", json.dumps(differences))
    assert max(differences.values()) < TOLERANCE, differences
    assert np.allclose(ours.sum(axis=1), 1, atol=1e-5)
    # the images are not all alike to the model: the comparison covers more than one answer
    assert len({int(np.argmax(row)) for row in theirs}) >= 2, theirs


def test_preprocessing_end_to_end_equals_nsfwjs_infer(original: dict[str, Any], model: NsfwJs) -> None:
    assert original["backend"] == "cpu"
    theirs = np.asarray(original["images"], dtype=np.float64)
    ours = model.scores(list(IMAGES.values())).astype(np.float64)
    differences = per_class(ours, theirs)
    print("max abs difference per class, from pixels:", json.dumps(differences))
    for name, mine, original in zip(IMAGES, ours, theirs, strict=True):
        assert np.max(np.abs(mine - original)) < TOLERANCE, (name, mine, original)


def test_committed_model_is_the_conversion_of_the_pinned_package(modules: Path, tmp_path: Path) -> None:
    output = tmp_path / "nsfwjs.onnx"
    subprocess.run([sys.executable, str(TOOLS / "convert.py"), "--modules", str(modules), "--output", str(output)],
                   check=True, capture_output=True, timeout=600)
    shipped = json.loads(MODEL.with_suffix(".json").read_text())
    made = json.loads(output.with_suffix(".json").read_text())
    assert hashlib.sha256(output.read_bytes()).hexdigest() == made["onnx_sha256"] == shipped["onnx_sha256"]
    assert hashlib.sha256(MODEL.read_bytes()).hexdigest() == shipped["onnx_sha256"]
    assert made["source_sha256"] == shipped["source_sha256"] and made["nsfwjs"] == shipped["nsfwjs"]


def test_the_model_ships_with_its_licence_and_source() -> None:
    import onnx

    source = json.loads(MODEL.with_suffix(".json").read_text())
    loaded = onnx.load(str(MODEL))
    assert loaded.opset_import[0].version == source["opset"]
    assert source["classes"] == list(CLASSES)
    assert 1_000_000 < MODEL.stat().st_size < 10_000_000  # uint8 weights, as the npm package holds them
    assert "MIT License" in (MODEL.parent / "NSFWJS-LICENSE").read_text()
    package = json.loads((TOOLS / "package.json").read_text())["dependencies"]
    assert package["nsfwjs"] == source["nsfwjs"]  # exact pins, no ranges
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["worker"]
    assert "models/*.onnx" in data and "models/*.json" in data and "models/*-LICENSE" in data


@pytest.mark.parametrize(("mode", "channels"), [("RGBA", 4), ("LA", 2), ("L", 1), ("P", 1), ("RGB", 3)])
def test_pixels_read_like_from_pixels(mode: str, channels: int) -> None:
    """fromPixels keeps R, G and B and drops alpha; grey is the same value in all three."""
    image = drawing(40, 30, 1).convert(mode)
    values = pixels(image)
    assert values.shape == (30, 40, 3) and values.dtype == np.uint8 and len(image.getbands()) == channels
    if mode in ("L", "LA"):
        assert (values[..., 0] == values[..., 1]).all() and (values[..., 1] == values[..., 2]).all()
    if mode == "RGBA":
        assert (values == np.asarray(image)[..., :3]).all()
