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
skip = tuple(sys.argv[2:])
names = [sys.argv[1]] + [m.name for m in pkgutil.walk_packages(package.__path__, sys.argv[1] + ".")
                        if not m.name.endswith("__main__") and not (skip and m.name.startswith(skip))]
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "loaded": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def imported_by(package: str, *skip: str) -> tuple[list[str], set[str]]:
    result = subprocess.run([sys.executable, "-c", PROBE, package, *skip], cwd=ROOT, capture_output=True,
                            text=True, check=True)
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
    # the commands stand on top of every side (the doctor's Discord checks read the bot's needs): the contract is
    # ponybot without them; the CLI's own start is checked below
    modules, loaded = imported_by(package, "ponybot.commands") if package == "ponybot" else imported_by(package)
    assert len(modules) > 1, "the probe found no modules to import"
    assert not any(name.startswith("ponybot.commands") for name in modules)
    assert not loaded & forbidden, f"{package} pulled in {sorted(loaded & forbidden)}"


def test_probe_sees_what_a_side_imports() -> None:
    """The check can fail: the worker side does load torch."""
    _modules, loaded = imported_by("worker")
    assert "torch" in loaded


def test_the_command_line_starts_without_discord_or_torch() -> None:
    """``ponybot`` loads discord.py or torch only for the command that needs it (the bot, a worker, the doctor's
    Discord checks): every other command starts light."""
    probe = ("import json, sys; import ponybot.commands.cli; "
             "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert "ponybot" in loaded
    assert not loaded & {*HEAVY, "discord"}, sorted(loaded & {*HEAVY, "discord"})
