"""What `hookloop train` will do, decided and checked before it changes anything on disk.

`plan_run(args)` resolves the run directory, the checkpoint to resume from and the config,
and refuses (a `ConfigError`, recorded in the run's journal as `run_refused`) every case
that would lose or mix a run's files. `hookloop train -c CFG --resume auto --run-dir D` is
one command a job script may run any number of times:

- no run in D yet: a fresh run from CFG;
- a run with an exact checkpoint: resume from the latest one, with CFG (or, without `-c`,
  the run's own `config.toml`) plus `--set`; a difference in a key that a resume may not
  change (`hookloop.lm.resume.SAFE_KEYS`) is refused, naming each key with both values;
- a run killed before its first exact checkpoint (no checkpoint at all, or only ones that
  are not exact): started again from step 0 with its own config, after its files are moved
  into `previous-<time>/`;
- a run whose checkpoints are all corrupt: refused (a person should look), unless
  `--restart`;
- a run that already reached its end: `RunPlan.finished` says so and nothing is trained.

A fresh run into a directory that already holds a run (without `--resume` or `--restart`)
is refused too. Every config value, the device and the data are checked first; only then is
the directory created (`created` lists the folders made, for clean-up on failure), locked
(`hookloop.runlock`), and, for a restart, its old files moved into `previous-<time>/`.
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hookloop.errors import ConfigError, RunLockedError
from hookloop.journal import Journal
from hookloop.rundir import check_dir_argument, make_dirs, move_aside, run_entries
from hookloop.runlock import lock_run_dir

__all__ = ["RunPlan", "plan_run"]


@dataclass
class RunPlan:
    """A checked decision: where the run goes, what it resumes, with which config."""

    run_dir: Path
    """The run directory, created and locked by this process."""
    config: dict[str, Any]
    """The resolved config."""
    checkpoint: Path | None = None
    """The checkpoint to resume from; None for a fresh start."""
    created: list[Path] = field(default_factory=list)
    """Folders this process created (deepest first), removed again if the run fails."""
    finished: str | None = None
    """Set when the checkpoint already is the run's end: the line saying so; nothing to train."""


def plan_run(args: argparse.Namespace, *, world_size: int = 1) -> RunPlan:
    """Decide and check everything `hookloop train` does before training; see the module.

    `world_size` is the number of torchrun ranks that will train: a resume must keep the
    global batch (`world_size x data.batch_size`) of the run it continues.

    Raises:
        ConfigError: a refused combination, a bad config value or an unusable device.
        RunLockedError: another process is writing the run directory.
        CheckpointError, DataError: an explicit checkpoint or the data is unusable.
    """
    check_dir_argument("--run-dir", args.run_dir)
    check_dir_argument("--runs", args.runs)
    if args.resume is None and not args.restart:
        config = _checked_config(args)
        run_dir = Path(args.run_dir) if args.run_dir else None
        if run_dir is not None and run_entries(run_dir):
            _lock_existing(run_dir)
            _refuse(
                run_dir,
                f"run directory {run_dir} already holds a run ({_listing(run_dir)}); continue "
                f"it with --resume auto --run-dir {run_dir}, start it over with --restart "
                f"--run-dir {run_dir} (its files are moved to {run_dir}/previous-<time>/), "
                "or train into another directory",
            )
        return _made(run_dir, args.runs, config)
    return _resume_or_restart(args, world_size)


def _resume_or_restart(args: argparse.Namespace, world_size: int) -> RunPlan:
    from hookloop.lm.resume import find_resume

    target = _target(args)
    if target is not None and (args.run_dir or _looks_like_a_run(target)):
        _lock_existing(target)  # before looking inside: nobody else may change it meanwhile
    run_dir, checkpoint = target, None
    skipped: list[tuple[Path, str]] = []
    if args.resume is not None:
        run_dir, checkpoint = find_resume(
            args.resume,
            Path(args.run_dir) if args.run_dir else None,
            Path(args.runs),
            skipped=skipped,
        )
    for path, why in skipped:
        print(f"passing over {path.name}: not exact ({why}); it stays for inspection", flush=True)
    if checkpoint is not None:
        config, saved = _resume_config(args, run_dir, checkpoint, world_size)
        plan = RunPlan(run_dir=run_dir, config=config, checkpoint=checkpoint)
        plan.finished = _finished(run_dir, saved["counters"], config["training"])
        return plan
    if run_dir is None or not run_entries(run_dir):  # nothing there yet: nothing to lose
        where = run_dir or args.runs
        print(f"no run in {where} yet: starting a fresh run", flush=True)
        return _made(run_dir, args.runs, _checked_config(args))
    early = args.resume is not None and _before_first_exact_checkpoint(run_dir)
    if not (args.restart or early):
        _refuse(
            run_dir,
            f"run {run_dir} has nothing valid to resume from (its checkpoints do not verify: "
            "see the warnings above); nothing was changed. Start it over with its own "
            f"config: hookloop train --restart --run-dir {run_dir} (its files are moved to "
            f"{run_dir}/previous-<time>/)",
        )
    config = _restart_config(args, run_dir, compare=not args.restart)
    aside = move_aside(run_dir)
    why = "--restart" if args.restart else "killed before its first exact checkpoint"
    Journal(run_dir / "journal.jsonl").record(
        "run_restarted", step=0, reason=why, echo=False, previous=str(aside)
    )
    if args.restart:
        print(f"restarting {run_dir}: its previous files are in {aside}", flush=True)
    else:
        print(
            f"run {run_dir} stopped before its first exact checkpoint: starting it again "
            f"from step 0 with its own config; its earlier files are in {aside}",
            flush=True,
        )
    return RunPlan(run_dir=run_dir, config=config)


def _before_first_exact_checkpoint(run_dir: Path) -> bool:
    """Whether the run holds no checkpoint, or only valid ones that are not exact (one a
    rank saved alone after an error): it stopped before its first exact checkpoint.
    A checkpoint that does not verify makes this False: that run needs a person."""
    from hookloop.checkpoint import CHECKPOINTS_DIR, inexact_reason, verify_checkpoint
    from hookloop.errors import CheckpointError

    folder = run_dir / CHECKPOINTS_DIR
    found = [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    for path in found:
        if path.name.startswith("."):  # a write or a swap in progress when it was killed
            continue
        try:
            if inexact_reason(verify_checkpoint(path)) is None:
                return False
        except CheckpointError:
            return False
    return True


def _restart_config(args: argparse.Namespace, run_dir: Path, *, compare: bool) -> dict[str, Any]:
    """The config a run starts over with: `-c` when given, else its own `config.toml`, plus
    `--set`. With `compare`, a difference from the run's own config in a key that a resume
    may not change is refused: the same command must not silently start another run."""
    from hookloop.lm.config import load_config
    from hookloop.lm.resume import check_changes, config_changes

    own = run_dir / "config.toml"
    if args.config is None and own.is_file():
        args.config = str(own)
    config = _checked_config(args)
    if compare and own.is_file() and Path(args.config).resolve() != own.resolve():
        check_changes(config_changes(load_config(own), config), force=args.force)
    return config


def _finished(run_dir: Path, counters: dict[str, int], training: dict[str, Any]) -> str | None:
    """The line saying that a checkpoint is already the end of its run, or None."""
    steps, epochs = training["max_steps"], training["epochs"]
    if steps and counters["step"] >= steps:
        limit = f"step {counters['step']}, training.max_steps = {steps}"
        more = f"--set training.max_steps={2 * steps}"
    elif epochs and counters["epoch"] >= epochs:
        limit = f"epoch {counters['epoch']}, training.epochs = {epochs}"
        more = f"--set training.epochs={2 * epochs}"
    else:
        return None
    return (
        f"run {run_dir} already reached its end ({limit}); nothing to train. To train it "
        f"further, resume with a larger limit, e.g. {more}"
    )


def _target(args: argparse.Namespace) -> Path | None:
    """The run directory that `--run-dir`, `--resume` or `--restart` name (None: `--resume
    auto` with no run under `--runs`)."""
    from hookloop.checkpoint import CHECKPOINTS_DIR
    from hookloop.lm.recipe import latest_run_dir

    if args.run_dir:
        return Path(args.run_dir)
    if args.resume not in (None, "auto"):
        path = Path(args.resume)
        if (path / "state.json").is_file() or path.parent.name == CHECKPOINTS_DIR:
            return path.parent.parent
        return path
    if args.resume is None:
        raise ConfigError(
            "--restart needs the run to start over: pass --run-dir DIR (or --resume with it)"
        )
    return latest_run_dir(args.runs)


def _looks_like_a_run(path: Path) -> bool:
    return (path / "config.toml").is_file() or (path / "checkpoints").is_dir()


def _resume_config(
    args: argparse.Namespace, run_dir: Path, checkpoint: Path, world_size: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The config to resume with (`-c`, else the run's own), checked against the one the
    checkpoint recorded, and the checkpoint's state.json."""
    from hookloop.checkpoint import inexact_reason, verify_checkpoint
    from hookloop.lm.resume import check_changes, check_global_batch, config_changes

    saved = verify_checkpoint(checkpoint)
    if args.config is None:  # else the job script's config, compared below
        if (run_dir / "config.toml").is_file():
            args.config = str(run_dir / "config.toml")
        else:  # the run's config.toml is gone: the checkpoint recorded the same config
            args.config_table = saved["config"]
    config = _checked_config(args)
    changes = check_global_batch(
        config_changes(saved["config"], config),
        saved["config"],
        config,
        saved_world=saved.get("world_size", 1),
        world=world_size,
        force=args.force,
    )
    lines = check_changes(changes, force=args.force)
    print(
        f"resuming {run_dir} from {checkpoint.name} (step {saved['counters']['step']}); "
        + ("config changes:" if lines else "config unchanged"),
        flush=True,
    )
    for line in lines:
        print(line, flush=True)
    if (why := inexact_reason(saved)) is not None:  # named explicitly: taken, but said
        print(f"note: {checkpoint.name} is not exact ({why})", flush=True)
    return config, saved


def _checked_config(args: argparse.Namespace) -> dict[str, Any]:
    """The config, the device and the data checked: everything that can be wrong with the
    command line is found before a folder is made (and, for a cpu run, before torch loads)."""
    from hookloop.lm.config import config_from_args
    from hookloop.lm.device import resolve_device
    from hookloop.lm.prepare import read_meta
    from hookloop.lm.tokenizers import load_tokenizer

    config = config_from_args(args)
    resolve_device(config["training"]["device"])
    path = config["data"]["path"]
    if path and (Path(path).is_dir() or not Path(path).exists()):  # a prepared directory
        read_meta(path)
        load_tokenizer(Path(path) / "tokenizer.json")
    return config


def _made(run_dir: Path | None, runs: str, config: dict[str, Any]) -> RunPlan:
    from hookloop.lm.recipe import new_run_dir_path

    run_dir = run_dir or new_run_dir_path(runs)
    created = make_dirs(run_dir)
    try:
        lock_run_dir(run_dir)
    except BaseException:
        from hookloop.rundir import remove_created

        remove_created(created)
        raise
    return RunPlan(run_dir=run_dir, config=config, created=created)


def _lock_existing(run_dir: Path) -> None:
    if not run_dir.is_dir():
        return  # made and locked later, when the plan is settled
    try:
        lock_run_dir(run_dir)
    except RunLockedError as exc:
        _refuse(run_dir, str(exc), event="run_locked")
    except OSError as exc:
        raise ConfigError(
            f"cannot lock run directory {run_dir}: {exc.strerror or exc}; is it writable?"
        ) from None


def _refuse(run_dir: Path, message: str, *, event: str = "run_refused") -> None:
    """Record the refusal in the run's journal (when it has one) and raise it."""
    journal = run_dir / "journal.jsonl"
    if journal.is_file():
        with contextlib.suppress(OSError):  # a read-only run: the message still gets out
            Journal(journal).record(event, step=-1, reason=message, echo=False)
    raise (RunLockedError if event == "run_locked" else ConfigError)(message)


def _listing(run_dir: Path) -> str:
    names = run_entries(run_dir)
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
