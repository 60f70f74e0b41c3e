"""Train a language model. With no arguments: a small char-level model on a slice of the
Python standard library's own sources, in a few minutes on two CPU cores.

Examples:
    hookloop train
    hookloop train --set data.path=data/mytext --set training.max_steps=2000
    hookloop train -c run.toml -p no:progress
    hookloop train --resume auto --run-dir runs/20250101-120000
    hookloop train --restart --run-dir runs/20250101-120000

The run goes to runs/<timestamp>/ (resolved config.toml, tokenizer.json, metrics,
checkpoints); the last lines printed say where it is and how to sample from it. One process
at a time writes a run directory (a second one is refused, naming the first one's PID).

`hookloop train -c run.toml --resume auto --run-dir D` may be run again and again, as a
job script's retry loop or a SLURM requeue does: it starts D fresh from run.toml, resumes
it from its latest exact checkpoint (with run.toml, refusing a change to the model, data or
optimizer), starts it again from step 0 when it stopped before its first exact checkpoint
(moving the earlier files into D/previous-<time>/), or says it already reached its end.
Without -c a resume uses the run's own config.toml (change what a resume may change with
--set). A run whose checkpoints are all corrupt is refused, every file left as it was;
--restart then starts it over with its own config.

Exit status: 0 when the run reached its end (or already had), 2 for a mistake in the
command, config or data (one line says what), 128 + N when signal N stopped it early after
its checkpoint was written (130 Ctrl-C, 143 SIGTERM, 138 SIGUSR1): run it again to continue.
Any other status is a crash; the checkpoints already written stay valid.

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
        help="continue a run from a checkpoint, with -c FILE or else the run's own config: "
        "auto = the latest exact checkpoint of --run-dir (else of the newest run under "
        "--runs); or a checkpoint or run directory. A run that does not exist yet starts "
        "fresh, one stopped before its first checkpoint starts again; one whose checkpoints "
        "are all corrupt is refused (see --restart)",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="start the run of --run-dir (or of --resume, when it has nothing valid to resume "
        "from) over with its own config, after moving its old files into "
        "<run>/previous-<time>/",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="with --resume: accept config changes that are not safe to resume with",
    )


def run(args: argparse.Namespace) -> int:
    """Build the configured run, train it, evaluate it once more and say where it is."""
    from hookloop.distributed import launch_from_env
    from hookloop.lm.runplan import plan_run

    if launch_from_env() is None:
        # One process: every check that needs no torch comes first, for a quick refusal.
        return _build_and_train(plan_run(args), None)
    from hookloop.distributed import on_rank0
    from hookloop.lm.config import config_from_args
    from hookloop.lm.recipe import launched

    with launched(config_from_args(args)) as launch:
        # Rank 0 plans, creates and locks the run directory; every rank gets the same plan.
        return _build_and_train(
            on_rank0(lambda: plan_run(args, world_size=launch.world_size)), launch
        )


def _build_and_train(plan: Any, launch: Any) -> int:
    from hookloop.checkpoint.atomic import replace_file
    from hookloop.distributed import announce
    from hookloop.lm.recipe import build_run
    from hookloop.rundir import remove_created

    main = launch is None or launch.rank == 0
    if plan.finished:
        if main:
            print(plan.finished, flush=True)
        return 0
    announce(launch, plan.config["distributed"]["strategy"])
    run_dir = plan.run_dir
    # build_run rewrites these two; a resume that is then refused must leave the run as it was
    kept = {
        name: (run_dir / name).read_bytes()
        for name in ("config.toml", "tokenizer.json")
        if main and plan.checkpoint is not None and (run_dir / name).is_file()
    }
    try:
        built = build_run(plan.config, run_dir, init_weights=plan.checkpoint is None)
        if plan.checkpoint is not None:
            from hookloop.checkpoint import load_checkpoint

            load_checkpoint(built.engine, plan.checkpoint)
    except BaseException:
        if main:
            for name, data in kept.items():
                replace_file(run_dir / name, data, unless_equal=True)
            remove_created(plan.created)  # a run that never started leaves no folder behind
        raise
    return _train(built, print if main else _silent)


def _train(built: Any, say: Any) -> int:
    """Train a built run, evaluate it on the validation split and say where it is (`say`
    is print on rank 0 and silent on the other ranks)."""
    engine, config = built.engine, built.config
    limits = [f"{built.max_steps} steps"] if built.max_steps else []
    limits += [f"{built.epochs} epochs"] if built.epochs else []
    say(
        f"training {engine.model.num_parameters():,} parameters on {built.data_dir} "
        f"({built.tokenizer.kind} tokens, vocabulary {built.tokenizer.vocab_size}) for "
        f"{' or '.join(limits)} on {engine.device}; run directory {built.run_dir}",
        flush=True,
    )
    start, tokens_before = time.perf_counter(), engine.state.tokens_seen  # > 0 when resumed
    step_before = engine.state.step
    state = built.fit()
    seconds = time.perf_counter() - start
    tokens = state.tokens_seen - tokens_before
    stopped = f" (stopped: {state.should_stop})" if state.should_stop else ""
    # Each count says what it counts: a resumed launch trained only part of the run.
    steps = f"{state.step} steps"
    if step_before:
        launch = state.step - step_before
        steps = f"{launch} steps this launch (steps {step_before + 1} to {state.step})"
    say(
        f"done: {steps}, {tokens:,} tokens in {seconds:.1f}s "
        f"({tokens / max(seconds, 1e-9):,.0f} tokens/s){stopped}",
        flush=True,
    )
    if state.exit_status:  # stopped from outside (a signal): saved, not finished
        say(
            f"run {built.run_dir} stopped before its end; continue it with "
            f"{command_line('train', '--resume', 'auto', '--run-dir', built.run_dir)} "
            f"(exit status {state.exit_status})",
            flush=True,
        )
        return state.exit_status
    _final_eval(engine, config["data"]["val_batches"] or None, say)
    if say is _silent:
        return 0
    print(f"run directory: {built.run_dir}")
    _plot(built.run_dir)
    print(f"sample from it: {command_line('sample', '--run', built.run_dir)}")
    return 0


def _silent(*args: Any, **kwargs: Any) -> None:
    """print() on the ranks other than 0: they say nothing."""


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


def _plot(run_dir: Path) -> None:
    """Draw the run's curves into run_dir/metrics.png when matplotlib is there."""
    from hookloop.errors import HookloopError
    from hookloop.plotting import plot_run

    if not (run_dir / "metrics.csv").is_file():
        return  # the csv plugin was disabled
    try:
        print(f"loss curves: {plot_run(run_dir, run_dir / 'metrics.png')}")
    except HookloopError as exc:  # no matplotlib: say how to get the picture
        print(f"loss curves: {command_line('plot', run_dir)} ({exc})")
