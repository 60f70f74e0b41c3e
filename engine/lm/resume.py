"""Resuming a run from the command line: which checkpoint, which config, which changes.

`hookloop train --resume auto|PATH` uses these. A resumed run is built from the config the
run was started with (`run_dir/config.toml`, else the config its checkpoint recorded) plus
the command line's `--set` overrides, or from `-c FILE` when given (a job script that always
passes the same file). The differences from the checkpoint's recorded config are printed;
only the safe ones are accepted unless `--force`:

- safe: `training.max_steps`, `training.epochs`, `training.device`, `training.compile`,
  `training.threads`, `data.val_batches`, every `distributed.*` key (checkpoints hold whole
  tensors whatever the strategy) and every `plugins.*` key (logging, evaluation and
  checkpoint cadence, schedule, enabling or disabling a plugin);
- a changed `data.batch_size` is safe when the global batch (`batch_size` times the number
  of ranks) stays the same, e.g. 2 ranks with 16 resumed on 1 with 32: every step then
  reads the very windows it would have read; a changed global batch is refused (the data
  position would not match);
- refused: everything else: the model's shape, the data (`data.path`, `seq_len`,
  `batch_size`, `sampling`, `shuffle`, `batches_per_epoch`), `training.accumulate`,
  `training.precision`, `training.seed` and `optimizer.*` (the optimizer's hyper-parameters
  are restored from the checkpoint, so a changed value would silently not apply).

This module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hookloop.errors import CheckpointError, ConfigError

__all__ = [
    "SAFE_KEYS",
    "Change",
    "check_changes",
    "check_global_batch",
    "config_changes",
    "find_resume",
]

SAFE_KEYS = (
    "training.max_steps",
    "training.epochs",
    "training.device",
    "training.compile",
    "training.threads",
    "data.val_batches",
    "optimizer.fused",  # the kernel, not the maths; a checkpoint's runs predate the key
    "distributed.",
    "plugins.",
)
"""Config keys (a trailing dot: every key below it) that a resume may change."""


@dataclass(frozen=True, slots=True)
class Change:
    """One config key whose value differs between the checkpoint and the new config."""

    key: str
    old: Any
    new: Any
    accepted: bool = False
    """Safe in this resume although its key is not always (a batch size that keeps the
    global batch)."""

    @property
    def safe(self) -> bool:
        """Whether a resume may apply it without `--force`."""
        return self.accepted or any(
            self.key == k or (k.endswith(".") and self.key.startswith(k)) for k in SAFE_KEYS
        )

    def __str__(self) -> str:
        return f"{self.key}: {self.old!r} -> {self.new!r}"


_MISSING = "<unset>"


def _flatten(table: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(table, dict) or not table:  # an empty table is a value too
        return {prefix.rstrip("."): table}
    flat: dict[str, Any] = {}
    for key, value in table.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """Every key whose value differs between two configs, as dotted names, sorted."""
    old_flat, new_flat = _flatten(saved), _flatten(new)
    # A key added to the schema after the checkpoint was written holds its default there.
    old_flat = {**_defaults_of(set(new_flat) - set(old_flat)), **old_flat}
    keys = sorted(set(old_flat) | set(new_flat))
    return [
        Change(k, old_flat.get(k, _MISSING), new_flat.get(k, _MISSING))
        for k in keys
        if _normal(k, old_flat.get(k, _MISSING)) != _normal(k, new_flat.get(k, _MISSING))
    ]


def _defaults_of(keys: set[str]) -> dict[str, Any]:
    from hookloop.lm.schema import SCHEMA

    defaults = {}
    for key in keys:
        section, _, name = key.partition(".")
        if name in SCHEMA.get(section, {}):
            defaults[key] = SCHEMA[section][name].default
    return defaults


def _normal(key: str, value: Any) -> Any:
    if key == "data.path" and isinstance(value, str) and value:
        # A run written before paths were stored absolute names its data relative to the
        # working directory; the same directory spelled either way is no change.
        return str(Path(value).expanduser().resolve())
    return list(value) if isinstance(value, tuple) else value


def check_changes(changes: list[Change], *, force: bool) -> list[str]:
    """The lines describing each change; raises unless every change is safe or forced.

    Raises:
        ConfigError: an unsafe change without `force`, naming every such key.
    """
    lines = [
        f"  {c}  ({'applied' if c.safe else 'FORCED' if force else 'refused'})" for c in changes
    ]
    unsafe = [f"{c.key} ({c.old!r} in the run, {c.new!r} now)" for c in changes if not c.safe]
    if unsafe and not force:
        raise ConfigError(
            f"the config differs from the run's in what defines the model, data or optimizer: "
            f"{'; '.join(unsafe)}; nothing was changed. Undo the change, train into another "
            "--run-dir, or pass --force to resume anyway"
        )
    return lines


def check_global_batch(
    changes: list[Change],
    saved: dict[str, Any],
    config: dict[str, Any],
    *,
    saved_world: int,
    world: int,
    force: bool,
) -> list[Change]:
    """Accept a `data.batch_size` change that keeps the global batch; refuse a global batch
    that changes (also through the number of ranks alone) unless `force`. When other keys
    that a resume may not change differ too, the changes are returned as they are, for
    `check_changes` to name them all in one refusal.

    Args:
        changes: `config_changes(saved, config)`.
        saved: The checkpoint's config; `config` the new one.
        saved_world: Ranks the checkpoint was trained on; `world` the ranks now.

    Raises:
        ConfigError: the global batch changes and `force` is not set.
    """
    old_b, new_b = saved["data"]["batch_size"], config["data"]["batch_size"]
    before, after = old_b * saved_world, new_b * world
    if before == after:
        return [
            Change(c.key, c.old, c.new, accepted=True) if c.key == "data.batch_size" else c
            for c in changes
        ]
    others = [c for c in changes if not c.safe and c.key != "data.batch_size"]
    if not force and not others:  # else check_changes names every unsafe key in one line
        hint = (
            f"set data.batch_size = {before // world} so it stays {before}"
            if before % world == 0
            else f"run on a number of ranks that divides {before}"
        )
        raise ConfigError(
            f"resuming changes the global batch from {before} windows ({old_b} x "
            f"{saved_world} ranks) to {after} ({new_b} x {world}): the data position would "
            f"not match; {hint}, or pass --force"
        )
    return changes


def find_resume(
    resume: str,
    run_dir: Path | None,
    runs: Path,
    *,
    skipped: list[tuple[Path, str]] | None = None,
) -> tuple[Path | None, Path | None]:
    """The run directory and checkpoint that `--resume` names.

    Args:
        resume: `auto` (the latest valid, exact checkpoint of the run: `run_dir`, else the
            newest run under `runs`), a checkpoint directory (taken even when not exact),
            or a run directory (as `auto`).
        run_dir: `--run-dir`, when given.
        runs: `--runs`, the directory holding one sub-directory per run.
        skipped: Each valid checkpoint passed over because it is not exact is appended as
            `(path, why)`.

    Returns:
        `(run_dir, checkpoint)`; the checkpoint is None when the run has no valid one, and
        run_dir is None when `auto` found no run at all. `hookloop train` refuses to go on
        from a run that holds files but no valid checkpoint (see `hookloop.lm.runplan`).

    Raises:
        CheckpointError: an explicit PATH that is not a valid checkpoint or run directory.
    """
    from hookloop.checkpoint import (
        CHECKPOINTS_DIR,
        STATE_FILE,
        latest_valid_checkpoint,
        verify_checkpoint,
    )
    from hookloop.journal import Journal

    def latest(run: Path) -> Path | None:  # invalid ones are logged and journaled
        journal = Journal(run / "journal.jsonl") if run.is_dir() else None
        return latest_valid_checkpoint(run, journal=journal, exact=True, skipped=skipped)

    if resume == "auto":
        if run_dir is None:
            from hookloop.lm.recipe import latest_run_dir

            run_dir = latest_run_dir(runs)
        return run_dir, latest(run_dir) if run_dir is not None else None
    path = Path(resume)
    if (path / STATE_FILE).is_file() or path.parent.name == CHECKPOINTS_DIR:
        verify_checkpoint(path)
        return run_dir or path.parent.parent, path
    if (path / CHECKPOINTS_DIR).is_dir() or (path / "config.toml").is_file():
        return run_dir or path, latest(path)
    raise CheckpointError(
        f"--resume {resume}: not a checkpoint directory (no state.json) nor a run directory "
        "(no checkpoints/); pass auto, a run directory or runs/<run>/checkpoints/step-N"
    )
