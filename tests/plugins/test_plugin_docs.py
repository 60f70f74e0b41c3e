"""Every built-in plugin has a docs page listing each option with its true default."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from hookloop.loading import discover, instantiate

REPO = Path(__file__).resolve().parents[2]
BUILTINS = sorted(name for name, info in discover().items() if info.builtin)
DOCUMENTED_HERE = {
    "clip",
    "schedule",
    "console",
    "csv",
    "tensorboard",
    "progress",
    "eval",
    "throughput",
    "early_stop",
}  # must have a page; other built-ins once they do


def toml_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


@pytest.mark.parametrize("name", BUILTINS)
def test_page_has_every_option_with_its_default_and_is_linked(name):
    page = REPO / "docs" / "plugins" / f"{name}.md"
    if not page.exists() and name not in DOCUMENTED_HERE:
        pytest.skip(f"no docs/plugins/{name}.md yet")
    text = page.read_text()
    cls = type(instantiate(discover()[name], {}).plugin)
    for option in inspect.signature(cls).parameters.values():
        row = f"| `{option.name}` | `{toml_literal(option.default)}` |"
        assert row in text, f"{page.name}: missing or stale options row {row!r}"
    assert f"plugins/{name}.md" in (REPO / "mkdocs.yml").read_text()
    assert f"[`{name}`]({name}.md)" in (REPO / "docs" / "plugins" / "index.md").read_text()


@pytest.mark.parametrize("name", BUILTINS)
def test_page_shows_the_python_class_to_import(name):
    """The TOML table and the Python class: a reader of either way finds it on the page."""
    page = REPO / "docs" / "plugins" / f"{name}.md"
    if not page.exists() and name not in DOCUMENTED_HERE:
        pytest.skip(f"no docs/plugins/{name}.md yet")
    module, _, cls = discover()[name].target.partition(":")
    text = page.read_text()
    assert f"from {module} import" in text and cls in text, f"{page.name}: no `import {cls}`"
    assert f"[plugins.{name}]" in text, f"{page.name}: no TOML table"
