"""The folders are the architecture: the core never reaches up into the recipe or the plugins.

Layers, bottom to top: the core (`engine/*.py`, imported as `hookloop`) and the checkpoint
format (`engine/checkpoint/`); the LM recipe (`engine/lm/`); the built-in plugins
(`plugins/`); the command line (`engine/cli.py`, `engine/commands/`), which wires them all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENGINE = REPO / "engine"
APPLICATION = {ENGINE / "cli.py", ENGINE / "__main__.py"}


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


def test_no_module_is_over_400_lines():
    sizes = {
        str(p.relative_to(REPO)): len(p.read_text().splitlines())
        for p in [*ENGINE.rglob("*.py"), *(REPO / "plugins").rglob("*.py")]
    }
    assert {name: n for name, n in sizes.items() if n > 400} == {}, "split these by what they do"
