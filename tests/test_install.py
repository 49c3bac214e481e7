"""The install is locked: every requirement of every extra is pinned in ``requirements/lock.txt``, every
install (the Makefile, each Docker image) goes through that file, and the environment the suite runs in
is exactly the lock (``make install`` reinstalls when the lock changes)."""

from __future__ import annotations

import re
import shlex
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
#: Installed by the Makefile's TORCH line and the worker image from requirements/torch.txt, not by the lock.
TORCH_PIN = ROOT / "requirements" / "torch.txt"


def pins(path: Path) -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line of a requirements file."""
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9._-]+)==([^\s;#]+)", line):
            found[canonicalize_name(match[1])] = match[2]
    return found


def requirements_lines(path: Path) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in path.read_text().splitlines() if line.split("#", 1)[0].strip()]


def project_requirements() -> list[Requirement]:
    """Every requirement of the project and of each extra (the self-reference ``ponybot[...]`` aside), and the
    installer and build backend the lock carries."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        texts += [text for text in extra if not text.startswith("ponybot")]
    texts += requirements_lines(ROOT / "requirements" / "build.in")
    return [Requirement(text) for text in texts]


def torch_pin() -> Requirement:
    [line] = requirements_lines(TORCH_PIN)
    return Requirement(line)


def torch_version() -> str:
    """The release requirements/torch.txt pins (``torch==X``)."""
    [specifier] = torch_pin().specifier
    assert specifier.operator == "==", f"requirements/torch.txt must pin one release: {torch_pin()}"
    return specifier.version


def test_lock_pins_every_requirement_of_every_extra() -> None:
    locked = pins(LOCK)
    assert len(locked) > 50, "the lock is missing or empty: run `make lock`"
    unpinned, outside = [], []
    for requirement in project_requirements():
        name = canonicalize_name(requirement.name)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        if name == "torch":
            assert "torch" not in locked, "torch is installed by the Makefile's TORCH line, not by the lock"
            assert requirement.specifier.contains(torch_version()), (
                f"requirements/torch.txt's {torch_pin()} is outside pyproject's {requirement}")
            continue
        if name not in locked:
            unpinned.append(str(requirement))
        elif not requirement.specifier.contains(locked[name], prereleases=True):
            outside.append(f"{requirement} (locked {locked[name]})")
    assert not unpinned, f"not in the lock (run `make lock UPGRADE=`): {unpinned}"
    assert not outside, f"the lock pins a version pyproject.toml refuses (run `make lock UPGRADE=`): {outside}"


def test_the_environment_is_the_lock() -> None:
    """The suite runs on exactly the versions the lock names (a package installed some other way shows here)."""
    locked = pins(LOCK)
    differ = []
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name in locked and dist.version != locked[name]:
            differ.append(f"{name} {dist.version} (locked {locked[name]})")
    assert not differ, f"installed versions differ from {LOCK.relative_to(ROOT)}: {differ}; run `make install`"
    if "torch" in sys.modules or _installed("torch"):
        assert torch_pin().specifier.contains(metadata.version("torch"), prereleases=True)


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def pip_installs(text: str) -> list[list[str]]:
    """The argument lists of every ``pip install`` in a Makefile recipe or a Dockerfile's RUN lines."""
    text = text.replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        for part in re.split(r"&&|;", line):
            words = shlex.split(part.replace("$(PY) -m ", ""), posix=True) if "pip install" in part else []
            if "pip" in words and "install" in words:
                commands.append(words[words.index("install") + 1:])
    return commands


@pytest.mark.parametrize("path", ["Makefile", "docker/bot.Dockerfile", "docker/worker.Dockerfile",
                                  "docker/gallery.Dockerfile"])
def test_every_install_goes_through_the_lock(path: str) -> None:
    text = (ROOT / path).read_text()
    lock = "$(LOCK)" if path == "Makefile" else "requirements/lock.txt"
    commands = pip_installs(text)
    assert commands, f"{path} installs nothing?"
    for words in commands:
        assert "-c" in words and words[words.index("-c") + 1] == lock, f"{path}: pip install {' '.join(words)}"
    # the project itself is built by the locked setuptools, not by whatever a build environment fetches today
    project = [words for words in commands if any(word.startswith((".[", "-e")) for word in words)]
    assert project and all("--no-build-isolation" in words for words in project), path
    if path == "Makefile":
        target = re.search(r"^\$\(VENV\)/\.installed:(.*)$", text, re.M)
        assert target and "$(LOCK)" in target[1], "make install must run again when the lock changes"
        default = re.search(r"^TORCH \?= (\S+)$", text, re.M)
        assert default and Requirement(default[1]) == torch_pin(), "the Makefile's TORCH is requirements/torch.txt's"
    if path == "docker/worker.Dockerfile":
        assert any("requirements/torch.txt" in words for words in commands)
    if path != "Makefile":
        assert "COPY requirements requirements" in text
        assert "requirements" not in (ROOT / ".dockerignore").read_text().split()



def test_type_ignores_survive_dependencies_that_gain_hints() -> None:
    """An ignore that exists for a dependency's typing also allows ``unused-ignore``: a release that adds type
    hints (redis-py's Sentinel once did) must not turn ``make test`` red."""
    missing = []
    for package in ("ponybot", "bot", "worker", "gallery"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                match = re.search(r"type:\s*ignore(\[[^\]]*\])?", line)
                if match and "unused-ignore" not in (match[1] or ""):
                    missing.append(f"{path.relative_to(ROOT)}:{number}")
    assert not missing, f"add unused-ignore to these ignores: {missing}"
