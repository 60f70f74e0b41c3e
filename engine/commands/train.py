"""Train a language model. With no arguments: a small char-level model on a slice of the
Python standard library's own sources, in a few minutes on two CPU cores.

Examples:
    hookloop train
    hookloop train --set data.path=data/shakespeare --set training.max_steps=2000
    hookloop train -c run.toml -p no:progress
    hookloop train --resume auto --run-dir runs/20250101-120000

The run goes to runs/<timestamp>/ (resolved config.toml, tokenizer.json, metrics,
checkpoints); the last lines printed say where it is and how to sample from it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from hookloop.cli import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `train` options."""
    add_config_arguments(parser)
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--run-dir", metavar="DIR", help="write the run here instead of a new runs/<timestamp>/"
    )
    where.add_argument(
        "--runs",
        metavar="BASE",
        default="runs",
        help="directory holding one sub-directory per run (default: runs)",
    )
    parser.add_argument(
        "--resume",
        metavar="auto|PATH",
        help="continue a run from a checkpoint: auto = the latest valid checkpoint of "
        "--run-dir (else of the newest run under --runs), a fresh start when there is none; "
        "or a checkpoint or run directory",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="with --resume: accept config changes that are not safe to resume with",
    )


def run(args: argparse.Namespace) -> int:
    """Build the configured run, train it, evaluate it once more and say where it is."""
    from hookloop.lm.config import config_from_args
    from hookloop.lm.recipe import build_run, new_run_dir

    checkpoint = None
    if args.resume:
        run_dir, checkpoint, config = _resume(args)
    else:
        run_dir, config = None, config_from_args(args)
        _refuse_a_run_with_checkpoints(args.run_dir)
    run_dir = run_dir or (Path(args.run_dir) if args.run_dir else new_run_dir(args.runs))
    # build_run rewrites these two; a resume that is then refused must leave the run as it was
    kept = {
        name: (run_dir / name).read_bytes()
        for name in ("config.toml", "tokenizer.json")
        if checkpoint is not None and (run_dir / name).is_file()
    }
    try:
        built = build_run(config, run_dir, init_weights=checkpoint is None)
        if checkpoint is not None:
            from hookloop.checkpoint import load_checkpoint

            load_checkpoint(built.engine, checkpoint)
    except BaseException:
        for name, data in kept.items():
            (run_dir / name).write_bytes(data)
        if run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # leave no empty run behind for `sample` to trip over
        raise
    engine = built.engine
    limits = [f"{built.max_steps} steps"] if built.max_steps else []
    limits += [f"{built.epochs} epochs"] if built.epochs else []
    print(
        f"training {engine.model.num_parameters():,} parameters on {built.data_dir} "
        f"({built.tokenizer.kind} tokens, vocabulary {built.tokenizer.vocab_size}) for "
        f"{' or '.join(limits)} on {engine.device}; run directory {built.run_dir}",
        flush=True,
    )
    start, tokens_before = time.perf_counter(), engine.state.tokens_seen  # > 0 when resumed
    state = built.fit()
    seconds = time.perf_counter() - start
    tokens = state.tokens_seen - tokens_before
    # The eval plugin's periodic evaluations may use a subset; the last word is the full split.
    metrics = engine.evaluate(max_batches=config["data"]["val_batches"] or None)
    stopped = f" (stopped: {state.should_stop})" if state.should_stop else ""
    print(
        f"done: {state.step} steps, {tokens:,} tokens in {seconds:.1f}s "
        f"({tokens / max(seconds, 1e-9):,.0f} tokens/s){stopped}"
    )
    val = engine.val_data
    print(
        f"validation loss {metrics['val_loss']:.4f} nats/token (perplexity "
        f"{metrics['val_ppl']:.2f}) on {min(len(val), config['data']['val_batches'] or len(val))} "
        f"batches of the validation split"
    )
    print(f"run directory: {built.run_dir}")
    _plot(built.run_dir)
    print(f"sample from it: hookloop sample --run {built.run_dir}")
    return 0


def _plot(run_dir: Path) -> None:
    """Draw the run's curves into run_dir/metrics.png when matplotlib is there."""
    from hookloop.commands.plot import plot_run
    from hookloop.errors import HookloopError

    if not (run_dir / "metrics.csv").is_file():
        return  # the csv plugin was disabled
    try:
        print(f"loss curves: {plot_run(run_dir, run_dir / 'metrics.png')}")
    except HookloopError as exc:  # no matplotlib: say how to get the picture
        print(f"loss curves: hookloop plot {run_dir} ({exc})")


def _resume(args: argparse.Namespace) -> tuple[Path | None, Path | None, dict[str, Any]]:
    """The run directory, checkpoint and config of `--resume`, after checking the changes.

    The config is the run's own config.toml with this command line's `--set` and `-p`
    applied, unless `-c` names another file; see `hookloop.lm.resume` for which changes a
    resume accepts.
    """
    from hookloop.checkpoint import verify_checkpoint
    from hookloop.lm.config import config_from_args
    from hookloop.lm.resume import check_changes, config_changes, find_resume

    run_dir, checkpoint = find_resume(
        args.resume, Path(args.run_dir) if args.run_dir else None, Path(args.runs)
    )
    if checkpoint is None:  # a fresh start: in --run-dir if given, else in a new run
        print(f"no valid checkpoint in {run_dir or args.runs}: starting a fresh run", flush=True)
        return Path(args.run_dir) if args.run_dir else None, None, config_from_args(args)
    if args.config is None and (run_dir / "config.toml").is_file():
        args.config = str(run_dir / "config.toml")
    config = config_from_args(args)
    saved = verify_checkpoint(checkpoint)
    lines = check_changes(config_changes(saved["config"], config), force=args.force)
    print(
        f"resuming {run_dir} from {checkpoint.name} (step {saved['counters']['step']}); "
        + ("config changes:" if lines else "config unchanged"),
        flush=True,
    )
    for line in lines:
        print(line, flush=True)
    return run_dir, checkpoint, config


def _refuse_a_run_with_checkpoints(run_dir: str | None) -> None:
    """A fresh run into a directory that holds checkpoints would mix two runs' files."""
    from hookloop.checkpoint import CHECKPOINTS_DIR, list_checkpoints
    from hookloop.errors import ConfigError

    if run_dir and list_checkpoints(Path(run_dir) / CHECKPOINTS_DIR):
        raise ConfigError(
            f"run directory {run_dir} already holds checkpoints; continue it with "
            f"--resume auto --run-dir {run_dir}, or train into another directory"
        )
