"""hookloop: a small, pluggable, hook-based training engine for PyTorch language models.

The public names are imported lazily, so `import hookloop` (and `hookloop --help`) stays
fast and imports neither torch nor any optional package until a name that needs it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hookloop.errors import CheckpointError, ConfigError, DataError, HookloopError, PluginError
from hookloop.hookspecs import hookimpl, hookspec

if TYPE_CHECKING:
    from hookloop.engine import Engine
    from hookloop.loading import LoadedPlugin, discover, load_plugins
    from hookloop.state import State

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "Engine",
    "HookloopError",
    "LoadedPlugin",
    "PluginError",
    "State",
    "__version__",
    "discover",
    "hookimpl",
    "hookspec",
    "load_plugins",
]

_LAZY = {
    "Engine": "hookloop.engine",
    "State": "hookloop.state",
    "LoadedPlugin": "hookloop.loading",
    "discover": "hookloop.loading",
    "load_plugins": "hookloop.loading",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hookloop' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
