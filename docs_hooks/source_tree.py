"""mkdocs hook: let the API reference find `hookloop` however the package is installed.

The package is laid out under other names (`hookloop` is `engine/`, `hookloop.plugins` is
`plugins/`). A regular or strict editable install gives mkdocstrings a `hookloop` directory
to read; a plain `pip install -e .` gives only an import hook, which it cannot follow (it
then finds the `hookloop` console script instead). So the build reads the sources from a
temporary tree of links named as the package is, removed when mkdocs ends.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority

_trees: list[Path] = []


@event_priority(100)  # before mkdocstrings reads its handlers' options
def on_config(config: Any) -> Any:
    """Put a `hookloop/` tree of links to `engine/` and `plugins/` first on the handler's paths."""
    root = Path(config.config_file_path).parent
    tree = Path(tempfile.mkdtemp(prefix="hookloop-docs-"))
    _trees.append(tree)
    package = tree / "hookloop"
    package.mkdir()
    for entry in (root / "engine").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    (package / "plugins").symlink_to(root / "plugins")
    python = config["plugins"]["mkdocstrings"].config["handlers"].setdefault("python", {})
    python["paths"] = [str(tree), *python.get("paths", [])]
    return config


def on_shutdown() -> None:
    """Remove the link trees (one per configuration: `mkdocs serve` reloads it)."""
    while _trees:
        shutil.rmtree(_trees.pop(), ignore_errors=True)
