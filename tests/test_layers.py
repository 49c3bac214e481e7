"""The house in layers: commands -> bot | worker | gallery -> the contract, the walls between the sides, and no
import circle anywhere.

The import-linter contracts live in pyproject.toml ([tool.importlinter]); the circles are counted by
tests/import_graph.py (every import: module level, lazy, TYPE_CHECKING) and again on import-linter's own graph.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.import_graph import ROOT, Import, circles, imports, report

importlinter = pytest.importorskip("importlinter", reason="import-linter (the dev extra) is not installed")
grimp = pytest.importorskip("grimp", reason="grimp (import-linter's graph) is not installed")

from importlinter import configuration  # noqa: E402 (after the skip: the dev extra may be absent)
from importlinter.application import use_cases  # noqa: E402
from importlinter.application.app_config import settings  # noqa: E402
from importlinter.domain.contract import registry  # noqa: E402

PYPROJECT = str(ROOT / "pyproject.toml")
PACKAGES = ("ponybot", "bot", "worker", "gallery")


@pytest.fixture(scope="module")
def options() -> Any:
    configuration.configure()
    use_cases._register_built_in_contract_types()
    return use_cases.read_user_options(PYPROJECT)


@pytest.fixture(scope="module")
def graph(options: Any) -> Any:
    assert sorted(options.session_options["root_packages"]) == sorted(PACKAGES)
    return grimp.build_graph(*PACKAGES, include_external_packages=True, cache_dir=None)


def broken(options: Any, graph: Any) -> list[str]:
    """The names of the contracts the graph breaks."""
    found = []
    for contract_options in options.contracts_options:
        contract = registry.get_contract_class(contract_options["type"])(
            name=contract_options["name"], session_options=options.session_options, contract_options=contract_options)
        if not contract.check(copy.deepcopy(graph), verbose=False).kept:
            found.append(contract_options["name"])
    return found


def test_the_contracts_are_kept(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """What `lint-imports` says, through its own entry (a contract that cannot be read fails this too)."""
    monkeypatch.chdir(ROOT)
    configuration.configure()
    settings.configure(DEFAULT_CACHE_DIR=None)
    kept = use_cases.lint_imports(config_filename=PYPROJECT, cache_dir=None, no_logo=True)
    out = capsys.readouterr().out
    with capsys.disabled():
        print("\n" + "\n".join(line for line in out.splitlines() if line.strip().endswith(("KEPT", "BROKEN"))
                               or "ignored imports)" in line))
    assert kept, out
    assert out.count(" KEPT") == 6, out


@pytest.mark.parametrize(("importer", "imported", "contract"), [
    ("bot.features.generate", "ponybot.commands.cli", "Nothing imports the commands"),
    ("worker.runner", "ponybot.commands.up", "Layers: the commands stand on the sides"),
    ("gallery.server", "ponybot.commands.cli", "Layers: the commands stand on the sides"),
    ("ponybot.schemas", "ponybot.commands.cli", "Nothing imports the commands"),
    ("ponybot.queue", "worker.runner", "The contract imports no side and not Discord"),
    ("ponybot.settings", "gallery.db", "The contract imports no side and not Discord"),
    ("ponybot.policy", "discord", "The contract imports no side and not Discord"),
    ("bot.jobs", "worker.generate", "The sides never import each other"),
    ("gallery.site", "bot.app", "The sides never import each other"),
    ("worker.runner", "gallery.store", "The sides never import each other"),
    ("bot.app", "torch", "The bot, the gallery and the contract never import the GPU stack"),
    ("gallery.ingest", "transformers", "The bot, the gallery and the contract never import the GPU stack"),
    ("ponybot.images", "diffusers", "The bot, the gallery and the contract never import the GPU stack"),
    ("worker.runner", "discord", "The worker never imports discord"),
])
def test_a_crossed_wall_breaks_its_contract(options: Any, graph: Any, importer: str, imported: str,
                                            contract: str) -> None:
    """Each contract can fail: one import across its wall, added to the real graph, breaks it."""
    assert importer in graph.modules and imported in graph.modules
    crossed = copy.deepcopy(graph)
    crossed.add_import(importer=importer, imported=imported)
    assert any(name.startswith(contract) for name in broken(options, crossed)), broken(options, crossed)
    assert broken(options, graph) == []


def test_no_import_circles(capsys: pytest.CaptureFixture[str]) -> None:
    """Every import counts, module level and lazy; the report names each circle's modules."""
    edges = imports()
    assert len(edges) > 300, "the reader found too few imports to be reading the packages"
    lines = report(edges)
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert circles(edges) == [], "\n".join(lines)
    assert lines[-1] == "all imports: 0 cycles"


def test_no_circles_in_import_linters_graph(graph: Any) -> None:
    """The same count on grimp's graph: a second reader of the source, so one reader's blind spot fails."""
    edges = [Import(module, imported, 0, lazy=False) for module in graph.modules if module.split(".")[0] in PACKAGES
             for imported in graph.find_modules_directly_imported_by(module) if imported.split(".")[0] in PACKAGES]
    assert len(edges) > 300
    assert circles(edges) == []


@pytest.mark.parametrize(("edges", "expected"), [
    ([("a", "b"), ("b", "a")], [["a", "b"]]),
    ([("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")], [["a", "b", "c"]]),
    ([("a", "b"), ("b", "c"), ("a", "c")], []),
    ([("a", "b"), ("b", "a"), ("c", "d"), ("d", "e"), ("e", "c")], [["c", "d", "e"], ["a", "b"]]),
])
def test_the_circle_count_finds_a_circle(edges: list[tuple[str, str]], expected: list[list[str]]) -> None:
    assert circles([Import(a, b, 1, lazy=False) for a, b in edges]) == expected


def test_a_lazy_import_closes_a_circle_too(tmp_path: Any) -> None:
    """The reader sees imports inside functions and under TYPE_CHECKING, and resolves relative ones."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n")
    (package / "b.py").write_text("def f():\n    from . import c\n")
    (package / "c.py").write_text("from .a import x\n")
    edges = imports(tmp_path, ["pkg"])
    assert {(e.importer, e.imported, e.lazy) for e in edges} == {
        ("pkg.a", "pkg.b", False), ("pkg.b", "pkg.c", True), ("pkg.c", "pkg.a", False)}
    assert report(edges) == ["module-level imports: 0 cycles", "all imports: 1 cycles",
                             "  3 modules: pkg.a pkg.b pkg.c"]
