"""The shape of a checkpoint's `state.json` and tensor names, checked before anything is used.

`state.json` is not covered by a checksum (it holds the checksums), so every field that
loading reads is checked here: a hand-edited or forged file gives a `CheckpointError`
naming the file and the field, never a `TypeError` deep inside a restore.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Any

from hookloop.checkpoint.checksum import ALGORITHMS, known, parse
from hookloop.checkpoint.layout import FORMAT_VERSION, MODEL_FILE, STATE_FILE
from hookloop.errors import CheckpointError
from hookloop.filecheck import field, short

__all__ = ["check_optimizer_names", "check_state", "recorded_checksum"]

_FIX = "the checkpoint was edited or damaged; use an earlier checkpoint"
_COUNTERS = ("step", "epoch", "epoch_batch", "micro_step", "tokens_seen")
_DTYPES = {
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
}
_OPTIMIZER_KEY = re.compile(r"^state\.(\d+)\.(.+)$")


def check_state(state: Any, path: Path) -> dict[str, Any]:
    """Check every field of a parsed `state.json` that loading a checkpoint reads.

    Returns:
        `state`, unchanged.

    Raises:
        CheckpointError: naming the first malformed field.
    """
    file = path / STATE_FILE
    if not isinstance(state, dict):
        raise CheckpointError(f"{file} is malformed: it must hold a JSON object; {_FIX}")
    version = state.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise CheckpointError(
            f"checkpoint {path} has format version {short(version)}; this hookloop reads version "
            f"{FORMAT_VERSION}: use the hookloop version that wrote it"
        )

    def get(name: str, kind: str, **kw: Any) -> Any:
        return field(state, name, kind, file=file, error=CheckpointError, fix=_FIX, **kw)

    files = get("files", "dict")
    if MODEL_FILE not in files:
        raise CheckpointError(f"checkpoint {path} is corrupt: {STATE_FILE} lists no {MODEL_FILE}")
    for name, info in files.items():  # names hold dots: checked one by one, not dotted
        field(
            {"file name": name}, "file name", "filename", file=file, error=CheckpointError, fix=_FIX
        )
        field({name: info}, name, "dict", file=file, error=CheckpointError, fix=_FIX)
        _check_file_entry(info, f"files.{name}", file)
    aliases = get("model.aliases", "dict", default={})
    for alias, stored in aliases.items():
        if not isinstance(stored, str):
            raise CheckpointError(
                f"{file} is malformed: field model.aliases.{alias} must be a string, "
                f"got {short(stored)}; {_FIX}"
            )
    for name in _COUNTERS:
        get(f"counters.{name}", "count")
    get("exact", "bool", default=True)
    get("config", "dict", default={})
    get("plugins", "dict", default={})
    if state.get("scaler") is not None:
        get("scaler", "dict")
    if state.get("tokenizer") is not None:
        get("tokenizer.sha256", "sha256")
    _check_optimizer_meta(get, file)
    _check_rng(get, file, "rng")
    # One state per rank under torchrun; None in a single process.
    ranks = [] if state.get("rng_ranks") is None else get("rng_ranks", "list")
    for i, _ in enumerate(ranks):
        get(f"rng_ranks.{i}", "dict")
        _check_rng(get, file, f"rng_ranks.{i}")
    get("world_size", "count", default=1, check=lambda v: v >= 1, allowed=">= 1")
    get("data", "dict", default={})
    return state


def _check_file_entry(info: dict[str, Any], where: str, file: Path) -> None:
    size = info.get("bytes", 0)
    if type(size) is not int or size < 0:
        raise CheckpointError(
            f"{file} is malformed: field {where}.bytes must be an integer >= 0, "
            f"got {short(size)}; {_FIX}"
        )
    if recorded_checksum(info) is not None:
        return
    key = "sha256" if "checksum" not in info and "sha256" in info else "checksum"
    value = info.get(key)
    algorithm = value.split(":", 1)[0] if isinstance(value, str) and ":" in value else None
    if key == "sha256":
        what = "must be a SHA-256 hex digest"
    elif algorithm is not None and algorithm not in ALGORITHMS:
        what = (
            f"names the unknown algorithm {short(algorithm)} (this hookloop knows {known()}; "
            "a newer hookloop may have written it)"
        )
    else:
        what = f'must be "<algorithm>:<hex digest>" with an algorithm of {known()}'
    raise CheckpointError(
        f"{file} is malformed: field {where}.{key} {what}, got {short(value)}; {_FIX}"
    )


def recorded_checksum(info: dict[str, Any]) -> tuple[str, str] | None:
    """`(algorithm, "<algorithm>:<hex>")` of a `files.<name>` entry of state.json, for
    either format (`checksum`, or the older `sha256`); None when it is malformed."""
    text = info.get("checksum")
    if text is None and isinstance(info.get("sha256"), str):
        text = f"sha256:{info['sha256']}"
    parsed = parse(text)
    return None if parsed is None else (parsed[0], text)


def _check_optimizer_meta(get: Any, file: Path) -> None:
    groups = get("optimizer.param_groups", "list")
    for i, group in enumerate(groups):
        if not isinstance(group, dict):
            raise CheckpointError(
                f"{file} is malformed: optimizer.param_groups[{i}] must be an object; {_FIX}"
            )
        params = group.get("params")
        if not isinstance(params, list) or not all(type(p) is int for p in params):
            raise CheckpointError(
                f"{file} is malformed: optimizer.param_groups[{i}].params must be "
                f"a list of integers; {_FIX}"
            )
        for key, value in group.items():
            _check_encoded(value, f"optimizer.param_groups[{i}].{key}", file)
    scalars = get("optimizer.scalars", "dict", default={})
    for index, values in scalars.items():
        if not index.isdigit() or not isinstance(values, dict):
            raise CheckpointError(
                f"{file} is malformed: optimizer.scalars.{index} must be an object "
                f"under a parameter index; {_FIX}"
            )
        for key, value in values.items():
            _check_encoded(value, f"optimizer.scalars.{index}.{key}", file)


def _check_encoded(value: Any, name: str, file: Path, depth: int = 0) -> None:
    """An optimizer value as `capture.encode` writes it: JSON scalars, lists, tagged tuples
    and tensors of a plain dtype."""
    bad = depth > 8
    if isinstance(value, dict):
        if "__tuple__" in value:
            items = value["__tuple__"]
            bad = bad or not isinstance(items, list)
            for item in items if not bad else ():
                _check_encoded(item, name, file, depth + 1)
        elif "__tensor__" in value:
            bad = bad or value.get("dtype") not in _DTYPES or not _numbers(value["__tensor__"])
        else:
            bad = True
    elif isinstance(value, list):
        for item in value:
            _check_encoded(item, name, file, depth + 1)
    elif value is not None and not isinstance(value, (bool, int, float, str)):
        bad = True
    if bad:
        raise CheckpointError(
            f"{file} is malformed: field {name} holds {short(value)}, not an "
            f"optimizer value; {_FIX}"
        )


def _numbers(value: Any, depth: int = 0) -> bool:
    if isinstance(value, list):
        return depth < 8 and all(_numbers(v, depth + 1) for v in value)
    return isinstance(value, (int, float))


def _check_rng(get: Any, file: Path, where: str) -> None:
    def b64(name: str) -> None:
        text = get(name, "str")
        try:
            base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise CheckpointError(
                f"{file} is malformed: field {name} must be base64 text; {_FIX}"
            ) from None

    b64(f"{where}.torch")
    numpy = get(f"{where}.numpy", "list")
    python = get(f"{where}.python", "list")
    ok_numpy = (
        len(numpy) == 5
        and isinstance(numpy[0], str)
        and isinstance(numpy[1], list)
        and len(numpy[1]) == 624
        and all(type(k) is int and 0 <= k < 2**32 for k in numpy[1])
        and all(type(v) is int for v in numpy[2:4])
        and 0 <= numpy[2] <= 624
        and isinstance(numpy[4], (int, float))
    )
    ok_python = (
        len(python) == 3
        and type(python[0]) is int
        and isinstance(python[1], list)
        and len(python[1]) == 625
        and all(type(k) is int and 0 <= k < 2**32 for k in python[1])
        and (python[2] is None or isinstance(python[2], float))
    )
    if not ok_numpy or not ok_python:
        which = f"{where}.numpy" if not ok_numpy else f"{where}.python"
        raise CheckpointError(
            f"{file} is malformed: field {which} is not a generator state; {_FIX}"
        )
    for i, _ in enumerate(get(f"{where}.cuda", "list", default=[])):
        b64(f"{where}.cuda.{i}")


def check_optimizer_names(names: Any, path: Path) -> None:
    """Every tensor of `optimizer.safetensors` is named `state.<index>.<name>`."""
    for name in names:
        if not _OPTIMIZER_KEY.match(name):
            raise CheckpointError(
                f"checkpoint {path} is corrupt: optimizer tensor {short(name)} is not named "
                f"state.<index>.<name>; {_FIX}"
            )
