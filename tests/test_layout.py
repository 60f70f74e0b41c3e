"""The folders are the architecture: the core never reaches up into the recipe or the plugins.

Layers, bottom to top: the core (`engine/*.py`, imported as `hookloop`) and the checkpoint
format (`engine/checkpoint/`); the LM recipe (`engine/lm/`); the built-in plugins
(`plugins/`, with their shared machinery in sub-packages); the command line (`engine/cli.py`,
`engine/commands/`), which wires them all.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENGINE = REPO / "engine"
APPLICATION = {ENGINE / "cli.py", ENGINE / "__main__.py"}
PLUGINS = REPO / "plugins"
SUBPACKAGES = sorted(p.parent for p in PLUGINS.glob("*/__init__.py"))
SOFT_LIMIT = 500  # lines: above it a module is flagged, not failed (one concern decides)


def _imported_modules(path: Path) -> set[str]:
    """Every module an import statement in `path` names, at any depth (lazy imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _core_modules() -> list[Path]:
    top = [p for p in ENGINE.glob("*.py") if p not in APPLICATION]
    return sorted(
        [*top, *(ENGINE / "checkpoint").glob("*.py"), *(ENGINE / "distributed").glob("*.py")]
    )


def _reaches(names: set[str], package: str) -> list[str]:
    return sorted(n for n in names if n == package or n.startswith(package + "."))


@pytest.mark.parametrize("path", _core_modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_the_core_imports_neither_the_recipe_nor_the_plugins(path):
    names = _imported_modules(path)
    assert not _reaches(names, "hookloop.lm"), f"{path.name} imports the LM recipe"
    assert not _reaches(names, "hookloop.plugins"), f"{path.name} imports a plugin"


@pytest.mark.parametrize("path", sorted((ENGINE / "lm").glob("*.py")), ids=lambda p: p.name)
def test_the_recipe_imports_no_plugin_module(path):
    # The recipe names plugins in its config and loads them by entry point, never by import.
    assert not _reaches(_imported_modules(path), "hookloop.plugins"), path.name


def test_the_import_scan_sees_lazy_and_from_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f():\n    from hookloop.lm import recipe\n    import hookloop.plugins.clip\n"
    )
    names = _imported_modules(sample)
    assert _reaches(names, "hookloop.lm") == ["hookloop.lm", "hookloop.lm.recipe"]
    assert _reaches(names, "hookloop.plugins") == ["hookloop.plugins.clip"]


@pytest.mark.parametrize(
    "path", sorted(PLUGINS.rglob("*.py")), ids=lambda p: str(p.relative_to(REPO))
)
def test_no_plugin_module_imports_the_command_line(path):
    names = _imported_modules(path)
    assert not _reaches(names, "hookloop.commands"), f"{path.name} imports a command"
    assert not _reaches(names, "hookloop.cli"), f"{path.name} imports the CLI"


def _core_names() -> set[str]:
    """What a plugin sub-package may import from hookloop besides the package itself: its
    public names, its core modules and packages (not the recipe, not the commands)."""
    import hookloop

    top = {p.stem for p in ENGINE.glob("*.py") if p not in APPLICATION} - {"__init__"}
    packages = {p.parent.name for p in ENGINE.glob("*/__init__.py")} - {"lm", "commands"}
    return {f"hookloop.{n}" for n in (*top, *packages, *hookloop.__all__)}


def _only_core_and_subpackages(names: set[str]) -> list[str]:
    core = _core_names()
    inner = {f"hookloop.plugins.{p.name}" for p in SUBPACKAGES}
    allowed = (*core, *inner)
    return sorted(
        n
        for n in names
        if n.startswith("hookloop.")
        and n != "hookloop.plugins"
        and not any(n == a or n.startswith(a + ".") for a in allowed)
    )


@pytest.mark.parametrize(
    "path",
    sorted(p for d in SUBPACKAGES for p in d.glob("*.py")),
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_plugin_subpackages_import_only_the_core(path):
    # Shared machinery sits below the plugins: it may use the core, the checkpoint format
    # and the other sub-packages, never the recipe nor a public plugin module.
    assert _only_core_and_subpackages(_imported_modules(path)) == [], path.name


def test_the_subpackage_rule_rejects_the_recipe_and_public_plugins(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from hookloop import hookimpl\nfrom hookloop.checkpoint import save_checkpoint\n"
        "from hookloop.plugins.stepvalues.hostcopy import HostCopy\n"
        "import hookloop.lm.recipe\nfrom hookloop.plugins import csv\n"
    )
    assert _only_core_and_subpackages(_imported_modules(sample)) == [
        "hookloop.lm.recipe",
        "hookloop.plugins.csv",
    ]


def test_long_modules_are_flagged_not_failed():
    # One concern per module decides where code goes, not a line count: a module above
    # SOFT_LIMIT lines is worth a look, so the test warns and passes.
    sizes = {
        str(p.relative_to(REPO)): len(p.read_text().splitlines())
        for p in [*ENGINE.rglob("*.py"), *PLUGINS.rglob("*.py")]
    }
    for name, lines in sorted(sizes.items()):
        if lines > SOFT_LIMIT:
            warnings.warn(f"{name} has {lines} lines: does it hold one concern?", stacklevel=1)
