"""The run configuration: a TOML file, built-in defaults for every key, command-line overrides.

A config has five sections. `[data]`, `[model]`, `[optimizer]` and `[training]` have a fixed
set of keys (see `SCHEMA`; every key has a default); `[plugins]` holds `enable`/`disable`
lists and one `[plugins.<name>]` table of options per plugin, checked by the plugins
themselves when they load.

    config = load_config("run.toml", ["model.n_layers=6", "training.max_steps=500"])

Everything is validated up front, before any data is read or model built, and each problem
is a one-line `ConfigError`: an unknown key (with the closest valid name), a wrong type, an
out-of-range value, `data.seq_len` above `model.max_seq_len`, or an LR warmup as long as the
run. This module imports no torch, so commands can load a config while `--help` stays fast.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hookloop.errors import ConfigError
from hookloop.lm.schema import (
    _TYPE_NAMES,
    DEFAULT_WARMUP_STEPS,
    PLUGIN_DEFAULTS,
    SCHEMA,
    SECTIONS,
    Key,
)

__all__ = [
    "DEFAULT_WARMUP_STEPS",
    "PLUGIN_DEFAULTS",
    "SCHEMA",
    "Key",
    "apply_plugin_flags",
    "config_from_args",
    "default_config",
    "dumps_toml",
    "load_config",
    "parse_override",
    "validate",
    "write_config",
]


def default_config() -> dict[str, Any]:
    """A fresh copy of the built-in defaults (plugin options: `PLUGIN_DEFAULTS`)."""
    config: dict[str, Any] = {
        s: {k: copy.deepcopy(key.default) for k, key in keys.items()} for s, keys in SCHEMA.items()
    }
    config["plugins"] = copy.deepcopy(PLUGIN_DEFAULTS)
    return config


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> dict[str, Any]:
    """Defaults, then the TOML file at `path`, then each `section.key=value` override.

    Args:
        path: A TOML file, or None for the defaults alone.
        overrides: `KEY=VALUE` strings as given to `--set`; the value is read as a TOML
            literal (`6`, `1e-3`, `true`, `[0.9, 0.99]`, `"text"`), else taken as a string.

    Returns:
        The resolved config: every section and key present, values validated.

    Raises:
        ConfigError: the file is missing or not TOML, or a key is unknown, mistyped or
            out of range.
    """
    config = default_config()
    if path is not None:
        path = Path(path)
        try:
            loaded = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        _merge(config, loaded, where=f"in {path}")
    for item in overrides:
        section_key, value = parse_override(item)
        _merge(config, _nest(section_key, value), where=f"in --set {item}")
    _fill_schedule(config)
    _fill_from_init(config)
    return validate(config)


def parse_override(item: str) -> tuple[str, Any]:
    """Split `section.key=value` and read the value as a TOML literal, else as a string."""
    name, sep, raw = item.partition("=")
    name = name.strip()
    if not sep or "." not in name or not all(name.split(".")):
        raise ConfigError(
            f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. --set model.n_layers=6"
        )
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return name, value


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config a command's `-c/--config`, `--set` and `-p` options describe.

    Uses `args.config`, `args.overrides` and `args.plugin_flags` as added by
    `hookloop.cli.add_config_arguments`; missing attributes count as not given.
    """
    config = load_config(getattr(args, "config", None), getattr(args, "overrides", None) or [])
    config["plugins"] = apply_plugin_flags(
        config["plugins"], getattr(args, "plugin_flags", None) or []
    )
    return validate(config)


def apply_plugin_flags(table: Mapping[str, Any], flags: list[str]) -> dict[str, Any]:
    """Fold `-p NAME` / `-p no:NAME` command-line flags into a `[plugins]` table."""
    result = dict(table)
    for flag in flags:
        key, name = ("disable", flag[3:]) if flag.startswith("no:") else ("enable", flag)
        result[key] = [*result.get(key, []), name]
    return result


def _fill_schedule(config: dict[str, Any]) -> None:
    """Resolve the LR schedule's recipe defaults that depend on other keys.

    Unless given: `warmup_steps` = min(100, a tenth of the run), `min_lr` = lr / 10.
    Both are written into the resolved config, so it reads back the same.
    """
    schedule = config["plugins"].setdefault("schedule", {})
    if not isinstance(schedule, dict):
        return
    if "warmup_steps" not in schedule:
        total = schedule.get("total_steps") or config["training"]["max_steps"]
        schedule["warmup_steps"] = (
            min(DEFAULT_WARMUP_STEPS, total // 10) if isinstance(total, int) else 0
        )
    schedule.setdefault("min_lr", config["optimizer"]["lr"] / 10)


def _fill_from_init(config: dict[str, Any]) -> None:
    """`model.init_from = "hf:PATH"`: the model's shape is the imported model's."""
    init_from = config["model"].get("init_from")
    if isinstance(init_from, str) and init_from.startswith("hf:"):
        from hookloop.lm.hf import hf_model_options

        config["model"].update(hf_model_options(init_from))


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def _merge(config: dict[str, Any], loaded: Mapping[str, Any], *, where: str) -> None:
    for section, table in loaded.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown config section [{section}] {where}"
                f"{_hint(section, SECTIONS, '[{}]')}; sections: {', '.join(SECTIONS)}"
            )
        if not isinstance(table, Mapping):
            raise ConfigError(f"config section [{section}] must be a table {where}, got {table!r}")
        if section == "plugins":
            _merge_plugins(config["plugins"], table, where=where)
            continue
        for key, value in table.items():
            if key not in SCHEMA[section]:
                names = [f"{section}.{k}" for k in SCHEMA[section]]
                raise ConfigError(
                    f"unknown config key {section}.{key} {where}"
                    f"{_hint(f'{section}.{key}', names, '{}')}; "
                    f"[{section}] keys: {', '.join(SCHEMA[section])}"
                )
            config[section][key] = _coerce(f"{section}.{key}", SCHEMA[section][key], value, where)


def _merge_plugins(plugins: dict[str, Any], table: Mapping[str, Any], *, where: str) -> None:
    for name, value in table.items():
        if name in ("enable", "disable"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(
                    f"plugins.{name} must be a list of plugin names {where}, got {value!r}"
                )
            plugins[name] = list(value)
        elif isinstance(value, Mapping):
            plugins[name] = {**plugins.get(name, {}), **value}
        else:
            raise ConfigError(
                f"plugins.{name} must be a table of options ([plugins.{name}]) "
                f"{where}, got {value!r}"
            )


def _hint(name: str, choices: Any, fmt: str) -> str:
    close = difflib.get_close_matches(name, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {fmt.format(close[0])}?)" if close else ""


def _coerce(name: str, key: Key, value: Any, where: str) -> Any:
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "floats2": isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value),
    }[key.type]
    if not ok:
        raise ConfigError(
            f"config key {name} must be {_TYPE_NAMES[key.type]}, got {value!r} "
            f"({type(value).__name__}) {where}"
        )
    if key.type == "float":
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"config key {name} must be finite, got {value!r} {where}")
    elif key.type == "floats2":
        value = [float(v) for v in value]
    if key.check is not None and not key.check(value):
        raise ConfigError(f"config key {name} must be {key.allowed}, got {value!r} {where}")
    return value


def validate(config: dict[str, Any]) -> dict[str, Any]:
    """Check the relations between keys (each key's type and range is checked on merge).

    Returns:
        `config`, unchanged.

    Raises:
        ConfigError: seq_len above max_seq_len, heads not dividing d_model, neither
            max_steps nor epochs set, or an LR warmup at least as long as the run.
    """
    data, model, training = config["data"], config["model"], config["training"]
    if data["seq_len"] > model["max_seq_len"]:
        raise ConfigError(
            f"data.seq_len ({data['seq_len']}) must not exceed model.max_seq_len "
            f"({model['max_seq_len']}); lower data.seq_len or raise model.max_seq_len"
        )
    if model["d_model"] % model["n_heads"]:
        raise ConfigError(
            f"model.n_heads ({model['n_heads']}) must divide model.d_model ({model['d_model']})"
        )
    if training["max_steps"] == 0 and training["epochs"] == 0:
        raise ConfigError(
            "training.max_steps and training.epochs are both 0 (no limit); set at least one of them"
        )
    schedule = config["plugins"].get("schedule", {})
    warmup = schedule.get("warmup_steps", 0) if isinstance(schedule, Mapping) else 0
    total = schedule.get("total_steps") or training["max_steps"]
    if isinstance(warmup, int) and total and warmup >= total:
        which = (
            "plugins.schedule.total_steps" if schedule.get("total_steps") else "training.max_steps"
        )
        raise ConfigError(
            f"plugins.schedule.warmup_steps ({warmup}) must be smaller than {which} "
            f"({total}): the warmup would never end; shorten it or train longer"
        )
    return config


# --- writing ---------------------------------------------------------------------------------


def dumps_toml(config: Mapping[str, Any]) -> str:
    """A TOML document for a config (nested tables, strings, numbers, booleans, lists).

    `load_config` reads it back to an equal config.
    """
    lines: list[str] = []
    _dump_table(config, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def write_config(config: Mapping[str, Any], path: str | Path) -> Path:
    """Write the resolved config as TOML (the run directory's `config.toml`)."""
    path = Path(path)
    path.write_text(dumps_toml(config), encoding="utf-8")
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
    if value is None:
        raise ConfigError("a config value is None, which TOML cannot hold; remove the key")
    raise ConfigError(f"cannot write config value {value!r} ({type(value).__name__}) as TOML")
