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
from hookloop.filecheck import read_text, short
from hookloop.lm.schema import (
    _TYPE_NAMES,
    DEFAULT_WARMUP_STEPS,
    INT_LIMITS,
    MAX_INT,
    PLUGIN_DEFAULTS,
    SCHEMA,
    SECTIONS,
    Key,
)
from hookloop.lm.toml_writer import dumps_toml, write_config

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
    "resolve_data_path",
    "shorten_run",
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
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    table: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Defaults, then the TOML file at `path`, then each `section.key=value` override.

    Args:
        path: A TOML file, or None for the defaults alone.
        overrides: `KEY=VALUE` strings as given to `--set`; the value is read as a TOML
            literal (`6`, `1e-3`, `true`, `[0.9, 0.99]`, `"text"`), else taken as a string.
        table: A config already parsed (e.g. the one a checkpoint recorded), merged and
            checked like a file, in place of `path`.

    Returns:
        The resolved config: every section and key present, values validated.

    Raises:
        ConfigError: the file is missing or not TOML, or a key is unknown, mistyped or
            out of range.
    """
    config = default_config()
    if table is not None:
        _merge(config, table, where="in the checkpoint's recorded config")
    elif path is not None:
        path = Path(path)
        fix = "pass a TOML config file (see docs/guide/configuration.md)"
        try:
            text = read_text(path, ConfigError, fix=fix)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        try:
            loaded = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                f"config file {path} is not valid TOML: {exc}; correct it there (the guide's "
                "configuration page shows the format)"
            ) from None
        except RecursionError:
            raise ConfigError(f"config file {path} is nested too deeply; {fix}") from None
        _merge(config, loaded, where=f"in {path}")
    for item in overrides:
        section_key, value = parse_override(item)
        shown = item if item.isprintable() else repr(item)  # one line, whatever was typed
        _merge(config, _nest(section_key, value), where=f"in --set {shown}")
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
        table = tomllib.loads(f"v = {raw.strip()}")
        value = table["v"] if list(table) == ["v"] else raw.strip()
    except (tomllib.TOMLDecodeError, RecursionError):
        value = raw.strip()
    return name, value


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config a command's `-c/--config`, `--set` and `-p` options describe.

    Uses `args.config`, `args.overrides` and `args.plugin_flags` as added by
    `hookloop.cli.add_config_arguments` (and `args.config_table`, a parsed config used in
    place of the file); missing attributes count as not given.
    """
    config = load_config(
        getattr(args, "config", None),
        getattr(args, "overrides", None) or [],
        table=getattr(args, "config_table", None),
    )
    config["plugins"] = apply_plugin_flags(
        config["plugins"], getattr(args, "plugin_flags", None) or []
    )
    resolve_data_path(config)
    return validate(config)


def resolve_data_path(config: dict[str, Any], base: str | Path | None = None) -> dict[str, Any]:
    """Make a relative `data.path` absolute (against `base`, default the working directory),
    so the run directory's config.toml names the data from wherever it is read."""
    path = config["data"]["path"]
    if path and not Path(path).expanduser().is_absolute():
        config["data"]["path"] = str((Path(base or Path.cwd()) / path).resolve())
    elif path:
        config["data"]["path"] = str(Path(path).expanduser())
    return config


def shorten_run(config: dict[str, Any], steps: int) -> str | None:
    """Make `config` a run of exactly `steps` optimizer steps (no epoch limit), deriving again
    what depends on the run's length: the schedule's `warmup_steps` keeps its share of the
    run, and a set `total_steps` becomes `steps`.

    Returns:
        A line saying how the schedule changed, or None when it did not.
    """
    training = config["training"]
    before = training["max_steps"] or None
    training["max_steps"], training["epochs"] = steps, 0
    schedule = config["plugins"].get("schedule")
    if not isinstance(schedule, dict):
        validate(config)
        return None
    total = schedule.get("total_steps") or before
    if schedule.get("total_steps"):
        schedule["total_steps"] = steps
    warmup = schedule.get("warmup_steps", 0)
    if isinstance(warmup, int) and warmup > 0:
        share = warmup * steps // total if isinstance(total, int) and total else steps // 10
        schedule["warmup_steps"] = min(warmup, share, steps - 1)
    validate(config)
    if schedule.get("warmup_steps", 0) != warmup:
        return (
            f"schedule: warmup_steps {warmup} -> {schedule['warmup_steps']}, "
            f"the same share of this {steps}-step run"
        )
    return None


def apply_plugin_flags(table: Mapping[str, Any], flags: list[str]) -> dict[str, Any]:
    """Fold `-p NAME` / `-p no:NAME` command-line flags into a `[plugins]` table."""
    result = dict(table)
    for flag in flags:
        key, name = ("disable", flag[3:]) if flag.startswith("no:") else ("enable", flag)
        if name not in result.get(key, []):  # a resume repeats the run's own flags
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
    if key.type == "sources":
        from hookloop.lm.mixture import check_sources

        return check_sources(value, where)
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
            f"config key {name} must be {_TYPE_NAMES[key.type]}, got {short(value)} "
            f"({type(value).__name__}) {where}"
        )
    if key.type == "int" and value > (limit := INT_LIMITS.get(name, MAX_INT)):
        raise ConfigError(f"config key {name} must be at most {limit}, got {short(value)} {where}")
    if key.type == "float":
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"config key {name} must be finite, got {value!r} {where}")
    elif key.type == "floats2":
        value = [float(v) for v in value]
    if key.check is not None and not key.check(value):
        raise ConfigError(f"config key {name} must be {key.allowed}, got {short(value)} {where}")
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
    if data["sources"] and (data["path"] or data["sampling"] != "random"):
        raise ConfigError(
            "data.sources mixes random windows of several directories: leave data.path empty "
            'and data.sampling = "random" with it'
        )
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
    if isinstance(warmup, int) and isinstance(total, int) and total and warmup >= total:
        which = (
            "plugins.schedule.total_steps" if schedule.get("total_steps") else "training.max_steps"
        )
        raise ConfigError(
            f"plugins.schedule.warmup_steps ({warmup}) must be smaller than {which} "
            f"({total}): the warmup would never end; shorten it or train longer"
        )
    return config
