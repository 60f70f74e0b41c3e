"""The package layout: engine/ is hookloop, plugins/ is hookloop.plugins, one copy only."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for package, source in setuptools["package-dir"].items():
        for init in (REPO / source).rglob("__init__.py"):
            found.add(".".join((package, *init.parent.relative_to(REPO / source).parts)))
    found.add("hookloop.commands")
    assert found == set(setuptools["packages"]), "update [tool.setuptools].packages"


def test_bare_source_dirs_are_not_importable():
    for bare in ("engine", "plugins"):
        spec = importlib.util.find_spec(bare)
        origin = Path(spec.origin) if spec and spec.origin else None
        assert origin is None or REPO not in origin.parents, f"{bare} importable from {origin}"


def test_one_copy_of_each_class_through_every_route():
    import hookloop
    import hookloop.engine
    import hookloop.plugins
    import hookloop.state

    assert hookloop.Engine is hookloop.engine.Engine
    assert hookloop.State is hookloop.state.State
    assert Path(hookloop.plugins.__file__).resolve().parent.name == "plugins"


def test_every_builtin_entry_point_names_a_module_in_plugins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for name, target in project.get("entry-points", {}).get("hookloop", {}).items():
        module, _, cls = target.partition(":")
        assert module == f"hookloop.plugins.{name}" and cls, target
        assert (REPO / "plugins" / f"{name}.py").is_file(), name


def test_source_never_imports_the_bare_directory_names():
    for path in [*(REPO / "engine").rglob("*.py"), *(REPO / "plugins").rglob("*.py")]:
        text = path.read_text()
        assert "from engine" not in text and "import engine" not in text, path
        assert "from plugins" not in text and "import plugins" not in text, path
