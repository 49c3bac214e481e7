"""The walls, as a running interpreter sees them: importing every module of a side loads no forbidden package.

The import-linter contracts (tests/test_layers.py) read the source and hold the walls between our own packages
(the sides never import each other, the contract imports no side). What they cannot see is a third-party
package that pulls in torch or discord behind our back: this probe imports every module and looks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers")

PROBE = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
names = [sys.argv[1]] + [m.name for m in pkgutil.walk_packages(package.__path__, sys.argv[1] + ".")
                        if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "loaded": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def imported_by(package: str) -> tuple[list[str], set[str]]:
    result = subprocess.run([sys.executable, "-c", PROBE, package], cwd=ROOT, capture_output=True, text=True,
                            check=True)
    data = json.loads(result.stdout.strip().splitlines()[-1])
    return data["modules"], set(data["loaded"])


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("bot", set(HEAVY)),
        ("worker", {"discord"}),
        ("ponybot", {*HEAVY, "discord"}),
        ("gallery", {*HEAVY, "discord"}),
    ],
)
def test_walls(package: str, forbidden: set[str]) -> None:
    modules, loaded = imported_by(package)
    assert len(modules) > 1, "the probe found no modules to import"
    assert not loaded & forbidden, f"{package} pulled in {sorted(loaded & forbidden)}"


def test_probe_sees_what_a_side_imports() -> None:
    """The check can fail: the worker side does load torch."""
    _modules, loaded = imported_by("worker")
    assert "torch" in loaded
