"""Train a language model. With no arguments: a small char-level model on a slice of the
Python standard library's own sources, in a few minutes on two CPU cores.

Examples:
    hookloop train
    hookloop train --set data.path=data/shakespeare --set training.max_steps=2000
    hookloop train -c run.toml -p no:progress

The run goes to runs/<timestamp>/ (resolved config.toml, tokenizer.json, metrics,
checkpoints); the last lines printed say where it is and how to sample from it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from hookloop.cli import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `train` options."""
    add_config_arguments(parser)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--run-dir", metavar="DIR", help="write the run here instead of "
                       "a new runs/<timestamp>/")
    where.add_argument("--runs", metavar="BASE", default="runs",
                       help="directory holding one sub-directory per run (default: runs)")


def run(args: argparse.Namespace) -> int:
    """Build the configured run, train it, evaluate it once more and say where it is."""
    from hookloop.config import config_from_args
    from hookloop.recipe import build_run, new_run_dir

    config = config_from_args(args)
    run_dir = Path(args.run_dir) if args.run_dir else new_run_dir(args.runs)
    try:
        built = build_run(config, run_dir)
    except BaseException:
        if run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # leave no empty run behind for `sample` to trip over
        raise
    engine = built.engine
    limits = [f"{built.max_steps} steps"] if built.max_steps else []
    limits += [f"{built.epochs} epochs"] if built.epochs else []
    print(f"training {engine.model.num_parameters():,} parameters on {built.data_dir} "
          f"({built.tokenizer.kind} tokens, vocabulary {built.tokenizer.vocab_size}) for "
          f"{' or '.join(limits)} on {engine.device}; run directory {built.run_dir}", flush=True)
    start = time.perf_counter()
    state = built.fit()
    seconds = time.perf_counter() - start
    # The eval plugin's periodic evaluations may use a subset; the last word is the full split.
    metrics = engine.evaluate(max_batches=config["data"]["val_batches"] or None)
    stopped = f" (stopped: {state.should_stop})" if state.should_stop else ""
    print(f"done: {state.step} steps, {state.tokens_seen:,} tokens in {seconds:.1f}s "
          f"({state.tokens_seen / max(seconds, 1e-9):,.0f} tokens/s){stopped}")
    val = built.engine.val_data
    print(f"validation loss {metrics['val_loss']:.4f} nats/token (perplexity "
          f"{metrics['val_ppl']:.2f}) on {min(len(val), config['data']['val_batches'] or len(val))} "
          f"batches of the validation split")
    print(f"run directory: {built.run_dir}")
    print(f"sample from it: hookloop sample --run {built.run_dir}")
    return 0
