"""One schema check for every file hookloop reads: the file and the field named in the error.

`read_json` reads a JSON file (any failure: not there, a directory, not UTF-8, not JSON,
nested too deeply) and `field` reads one typed value out of it. Both raise the error class
the caller names (a `CheckpointError` for `state.json`, a `DataError` for `meta.json`), with
a message saying which file, which field, what it should be and how to fix it. Nothing else
escapes them, whatever bytes the file holds.

    meta = read_json(path, DataError, fix="prepare the data again")
    dtype = field(meta, "dtype", "str", file=path, error=DataError, fix="prepare the data again")
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hookloop.errors import HookloopError

__all__ = ["KINDS", "field", "read_json", "read_json_object", "read_text", "short"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "count": ("an integer >= 0", lambda v: type(v) is int and 0 <= v < 2**63),
    "number": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "list": ("a list", lambda v: isinstance(v, list)),
    "dict": ("an object", lambda v: isinstance(v, dict)),
    "sha256": ("a SHA-256 hex digest", lambda v: isinstance(v, str) and bool(_HEX64.match(v))),
    "filename": (
        "a plain file name (letters, digits, _ . -)",
        lambda v: isinstance(v, str) and bool(_NAME.match(v)) and v not in (".", ".."),
    ),
}
"""Field kinds: what the error calls each, and the test a value must pass."""

_MISSING = object()


def short(value: Any, limit: int = 40) -> str:
    """`repr(value)`, cut to `limit` characters for a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_text(path: str | Path, error: type[HookloopError], *, fix: str) -> str:
    """The UTF-8 text of `path`, or `error` naming the file and why it cannot be read.

    `FileNotFoundError` is the exception: it passes through, so callers can say what a
    missing file means where they are.
    """
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise error(f"{path} is a directory, not a file; {fix}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path} is not UTF-8 text (byte {exc.start}); {fix}") from None
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}; {fix}") from None


def read_json(path: str | Path, error: type[HookloopError], *, fix: str) -> Any:
    """The JSON content of `path` (see `read_text` for a missing file)."""
    text = read_text(path, error, fix=fix)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path} is not valid JSON ({exc}); {fix}") from None
    except RecursionError:
        raise error(f"{path} is nested too deeply to be a hookloop file; {fix}") from None


def read_json_object(path: str | Path, error: type[HookloopError], *, fix: str) -> dict:
    """The JSON object in `path`: `read_json`, refusing any other top-level value."""
    data = read_json(path, error, fix=fix)
    if not isinstance(data, dict):
        raise error(
            f"{path} is malformed: the top level must be an object, got "
            f"{type(data).__name__}; {fix}"
        )
    return data


def field(
    data: Any,
    name: str,
    kind: str,
    *,
    file: str | Path,
    error: type[HookloopError],
    fix: str,
    default: Any = _MISSING,
    check: Callable[[Any], bool] | None = None,
    allowed: str = "",
) -> Any:
    """`data[name]` (dotted: `model.aliases`), checked to be of `kind` and pass `check`.

    A key of `data` that itself holds a dot (`model.safetensors`) is taken as it is; a
    number after a dot indexes a list (`rng_ranks.1`).

    Args:
        data: The parsed file (or a part of it).
        name: The field, dotted for nested objects; the error names it this way.
        kind: One of `KINDS`.
        file: The file, for the message.
        error: The error class to raise.
        fix: What the user should do, ending the message.
        default: Returned when the field is absent; without it, absence is an error.
        check: A further test of the value; `allowed` says in words what it accepts.
    """
    value = data
    parts = [name] if isinstance(data, dict) and name in data else name.split(".")
    for part in parts:
        if isinstance(value, list) and part.isdigit():  # `rng_ranks.1`: an item of a list
            value = value[int(part)] if int(part) < len(value) else _MISSING
        elif isinstance(value, dict):
            value = value.get(part, _MISSING)
        else:
            where = name.rsplit(".", 1)[0] if "." in name else "the top level"
            raise error(f"{file} is malformed: {where} must be an object; {fix}")
        if value is _MISSING:
            if default is not _MISSING:
                return default
            raise error(f"{file} is malformed: field {name} is missing; {fix}")
    what, test = KINDS[kind]
    if not test(value):
        raise error(f"{file} is malformed: field {name} must be {what}, got {short(value)}; {fix}")
    if check is not None and not check(value):
        raise error(
            f"{file} is malformed: field {name} must be {allowed}, got {short(value)}; {fix}"
        )
    return value
