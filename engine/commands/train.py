"""Train a language model. With no arguments: a small char-level model on a slice of the
Python standard library's own sources, in a few minutes on two CPU cores.

Examples:
    hookloop train
    hookloop train --set data.path=data/mytext --set training.max_steps=2000
    hookloop train -c run.toml -p no:progress
    hookloop train --resume auto --run-dir runs/20250101-120000

The run goes to runs/<timestamp>/ (resolved config.toml, tokenizer.json, metrics,
checkpoints); the last lines printed say where it is and how to sample from it.

Under torchrun (`torchrun --nproc_per_node 2 -m hookloop train ...`) every rank trains its
slice of each global batch (`data.batch_size` is per rank) and all ranks share one run
directory, chosen by rank 0; see the guide's "Scaling out" page.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from hookloop.cli import add_config_arguments, command_line


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
    from hookloop.lm.recipe import launched

    with launched(config_from_args(args)) as launch:
        return _train(args, launch)


def _train(args: argparse.Namespace, launch: Any) -> int:
    from hookloop.distributed import announce, on_rank0
    from hookloop.lm.recipe import build_run

    say = print if launch is None or launch.rank == 0 else _silent
    base_existed = Path(args.runs).exists()
    # Rank 0 chooses the run directory, checkpoint and config; every rank gets the same.
    run_dir, checkpoint, config = on_rank0(lambda: _where(args, launch))
    announce(launch, config["distributed"]["strategy"])
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
        if launch is None or launch.rank == 0:
            for name, data in kept.items():
                (run_dir / name).write_bytes(data)
            _remove_if_empty(run_dir)  # leave no empty run behind for `sample` to trip over
            if not base_existed:
                _remove_if_empty(Path(args.runs))
        raise
    engine = built.engine
    limits = [f"{built.max_steps} steps"] if built.max_steps else []
    limits += [f"{built.epochs} epochs"] if built.epochs else []
    say(
        f"training {engine.model.num_parameters():,} parameters on {built.data_dir} "
        f"({built.tokenizer.kind} tokens, vocabulary {built.tokenizer.vocab_size}) for "
        f"{' or '.join(limits)} on {engine.device}; run directory {built.run_dir}",
        flush=True,
    )
    start, tokens_before = time.perf_counter(), engine.state.tokens_seen  # > 0 when resumed
    state = built.fit()
    seconds = time.perf_counter() - start
    tokens = state.tokens_seen - tokens_before
    stopped = f" (stopped: {state.should_stop})" if state.should_stop else ""
    say(
        f"done: {state.step} steps, {tokens:,} tokens in {seconds:.1f}s "
        f"({tokens / max(seconds, 1e-9):,.0f} tokens/s){stopped}",
        flush=True,
    )
    _final_eval(engine, config["data"]["val_batches"] or None, say)
    if launch is not None and launch.rank != 0:
        return 0
    print(f"run directory: {built.run_dir}")
    _plot(built.run_dir)
    print(f"sample from it: {command_line('sample', '--run', built.run_dir)}")
    return 0


def _silent(*args: Any, **kwargs: Any) -> None:
    """print() on the ranks other than 0: they say nothing."""


def _where(args: argparse.Namespace, launch: Any) -> tuple[Path, Path | None, dict[str, Any]]:
    """The run directory, the checkpoint to resume (or None) and the config (rank 0)."""
    from hookloop.lm.config import config_from_args
    from hookloop.lm.recipe import new_run_dir

    checkpoint = None
    if args.resume:
        run_dir, checkpoint, config = _resume(args, 1 if launch is None else launch.world_size)
    else:
        run_dir, config = None, config_from_args(args)
        _refuse_a_run_with_checkpoints(args.run_dir)
    run_dir = run_dir or (Path(args.run_dir) if args.run_dir else new_run_dir(args.runs))
    return run_dir, checkpoint, config


def _final_eval(engine: Any, max_batches: int | None, say: Any = print) -> None:
    """The last word on the run: the validation split (the eval plugin's periodic passes may
    use a subset). Ctrl-C skips it; the run is saved already."""
    from hookloop.commands._progress import evaluate_with_progress

    try:
        metrics = evaluate_with_progress(engine, max_batches=max_batches)
    except KeyboardInterrupt:
        say(f"evaluation skipped (interrupted); run it later with {command_line('eval')}")
        return
    batches = min(len(engine.val_data), max_batches or len(engine.val_data))
    say(
        f"validation loss {metrics['val_loss']:.4f} nats/token (perplexity "
        f"{metrics['val_ppl']:.2f}) on {batches} batches of the validation split"
    )


def _remove_if_empty(directory: Path) -> None:
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()


def _plot(run_dir: Path) -> None:
    """Draw the run's curves into run_dir/metrics.png when matplotlib is there."""
    from hookloop.commands.plot import plot_run
    from hookloop.errors import HookloopError

    if not (run_dir / "metrics.csv").is_file():
        return  # the csv plugin was disabled
    try:
        print(f"loss curves: {plot_run(run_dir, run_dir / 'metrics.png')}")
    except HookloopError as exc:  # no matplotlib: say how to get the picture
        print(f"loss curves: {command_line('plot', run_dir)} ({exc})")


def _resume(
    args: argparse.Namespace, world_size: int
) -> tuple[Path | None, Path | None, dict[str, Any]]:
    """The run directory, checkpoint and config of `--resume`, after checking the changes.

    The config is the run's own config.toml with this command line's `--set` and `-p`
    applied, unless `-c` names another file; see `hookloop.lm.resume` for which changes a
    resume accepts.
    """
    from hookloop.checkpoint import verify_checkpoint
    from hookloop.lm.config import config_from_args
    from hookloop.lm.resume import check_changes, check_global_batch, config_changes, find_resume

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
    return run_dir, checkpoint, config


def _refuse_a_run_with_checkpoints(run_dir: str | None) -> None:
    """A fresh run into a directory that holds checkpoints would mix two runs' files."""
    from hookloop.checkpoint import CHECKPOINTS_DIR, list_checkpoints
    from hookloop.errors import ConfigError

    if run_dir and list_checkpoints(Path(run_dir) / CHECKPOINTS_DIR):
        raise ConfigError(
            f"run directory {run_dir} already holds checkpoints; continue it with "
            f"{command_line('train', '--resume', 'auto', '--run-dir', run_dir)}, "
            "or train into another directory"
        )
