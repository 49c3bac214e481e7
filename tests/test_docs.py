"""The docs site: `make docs` builds it strictly (a broken link, a page left out of the nav or a missing picture
fails), and everything the README used to say has a page that says it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

#: Every heading of the README before it became the front door (issue 24), the page that says it now and a
#: phrase of that section's text, so a section that lost its words fails as surely as one that lost its page.
FORMER_README = [
    ("Quick start", "getting-started.md", "The first run downloads the model"),
    ("For members", "members.md", "Starting from your picture."),
    ("For moderators: channel policy", "moderators.md", "Refused terms are matched as whole words"),
    ("The community gallery", "gallery.md", "Nothing lost, nothing delayed."),
    ("For operators", "operators/index.md", "A `PONYBOT_*` variable that no setting reads"),
    ("Settings", "operators/index.md", "Settings come from `config.toml`"),
    ("Models, LoRAs and embeddings", "operators/models.md", "Pickle checkpoints (`.ckpt`) are refused"),
    ("One machine", "operators/one-machine.md", "A second Ctrl-C stops the workers at once"),
    ("The command line", "operators/index.md", "Exit codes: 0 done"),
    ("More GPUs, more hosts", "operators/more-gpus.md", "Workers sharing a host share its CPUs"),
    ("Nothing lost", "operators/nothing-lost.md", "Redis only ever holds JSON"),
    ("Redis that survives losing its primary (Sentinel)", "operators/sentinel.md", "What a failover costs"),
    ("Kubernetes", "operators/kubernetes.md", "From `docker compose` to the cluster"),
    ("Seeing it run", "operators/metrics.md", "`ponybot_queue_depth`"),
    ("The image check", "operators/image-check-and-calibration.md", "NudeNet is\nnot offered"),
    ("Calibrating on your own images", "operators/image-check-and-calibration.md", "ponybot safety eval FOLDER"),
    ("The model card, applied", "model-card.md", "CLIP skip in A1111's convention"),
    ("Performance", "operators/performance.md", "Batching across members"),
    ("Running the GPU benchmark", "benchmarks.md", "`bench/gpu.py` builds an SD1.5-shaped pipeline"),
    ("Benchmarks", "benchmarks.md", "`make bench` runs them all"),
    ("Development", "development/index.md", "The imports run one way"),
]


def headings(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return [match[1].strip() for match in re.finditer(r"^#{1,4} (.+)$", text, flags=re.M)]


def nav_pages(nav: list[object]) -> list[str]:
    found: list[str] = []
    for item in nav:
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            for value in item.values():
                found.extend(nav_pages(value) if isinstance(value, list) else [value])
    return found


def read_nav() -> list[str]:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("tag:yaml.org,2002:python/name:", lambda loader, suffix, node: suffix)
    return nav_pages(yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)["nav"])


@pytest.mark.parametrize(("title", "page", "phrase"), FORMER_README, ids=[row[0] for row in FORMER_README])
def test_every_former_readme_section_has_its_page(title: str, page: str, phrase: str) -> None:
    path = DOCS / page
    assert path.is_file(), f"{title}: {page} is missing"
    assert title in headings(path), f"{title}: no such heading in {page} ({headings(path)})"
    assert " ".join(phrase.split()) in " ".join(path.read_text().split()), f"{title}: {phrase!r} is not in {page}"
    assert page in read_nav(), f"{page} is not in mkdocs.yml's nav"


def test_the_readme_is_the_front_door() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert len(readme.splitlines()) <= 60, len(readme.splitlines())
    for target in re.findall(r"\]\(([^)#]+)", readme):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


def test_every_page_is_in_the_nav() -> None:
    pages = {str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md")}
    assert set(read_nav()) == pages


def test_make_docs_builds_strictly(tmp_path: Path) -> None:
    """`make docs` runs `mkdocs build --strict`: its output lists the pages and no warning."""
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (the dev extra: mkdocs-material)")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(site)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output, output
    built = sorted(str(path.relative_to(site)) for path in site.rglob("index.html") if "assets" not in path.parts)
    assert len(built) == len(read_nav()), built
    assert (site / "images" / "discord-result.png").is_file()
