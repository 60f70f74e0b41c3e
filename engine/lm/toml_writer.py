"""Write a resolved config back as TOML (the standard library reads TOML but cannot write it).

Only what a config holds is supported: tables, strings, booleans, numbers, lists of those.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hookloop.errors import ConfigError

__all__ = ["dumps_toml", "write_config"]


def dumps_toml(config: Mapping[str, Any]) -> str:
    """A TOML document for a config (nested tables, strings, numbers, booleans, lists).

    `load_config` reads it back to an equal config.
    """
    lines: list[str] = []
    _dump_table(config, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def write_config(config: Mapping[str, Any], path: str | Path) -> Path:
    """Write the resolved config as TOML (the run directory's `config.toml`), atomically,
    and only when it changes: a crash never leaves half a config, and a resume with the same
    config leaves the file as it is."""
    from hookloop.checkpoint.atomic import replace_file

    path = Path(path)
    replace_file(path, dumps_toml(config).encode("utf-8"), unless_equal=True)
    return path


def _dump_table(table: Mapping[str, Any], prefix: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, Mapping)}
    tables = {k: v for k, v in table.items() if isinstance(v, Mapping)}
    if prefix and (scalars or not tables):
        lines.append("")
        lines.append(f"[{'.'.join(_toml_key(p) for p in prefix)}]")
    for key, value in scalars.items():
        lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in tables.items():
        _dump_table(value, [*prefix, key], lines)


def _toml_key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key)
    return key if bare else _toml_string(key)


def _toml_string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):  # an inline table, e.g. an entry of data.sources
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if value is None:
        raise ConfigError("a config value is None, which TOML cannot hold; remove the key")
    raise ConfigError(f"cannot write config value {value!r} ({type(value).__name__}) as TOML")
