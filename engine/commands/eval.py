"""Evaluate a trained run's checkpoint on the validation split: mean loss in nats per
token and perplexity. Under torchrun the ranks share the validation batches.

Examples:
    hookloop eval
    hookloop eval --run runs/20260101-120000 --checkpoint step-00001000 --max-batches 20
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hookloop.commands.sample import add_run_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `eval` options."""
    add_run_arguments(parser)
    parser.add_argument(
        "--data", metavar="DIR", help="prepared data directory (default: the run's data.path)"
    )
    parser.add_argument(
        "--max-batches",
        type=int,
        default=None,
        metavar="N",
        help="evaluate at most N batches (default: all)",
    )


def run(args: argparse.Namespace) -> int:
    """Print the validation loss and perplexity of the checkpoint."""
    from hookloop.commands._progress import evaluate_with_progress
    from hookloop.distributed import announce
    from hookloop.engine import Engine
    from hookloop.errors import CheckpointError, ConfigError, DataError
    from hookloop.lm.recipe import (
        data_dir,
        latest_run_dir,
        launched,
        load_trained,
        resolve_device,
        set_threads,
        val_dataset,
    )

    run_dir = args.run_dir or latest_run_dir(args.runs)
    if run_dir is None:
        raise CheckpointError(f"no runs under {args.runs}/; pass --run DIR")
    if args.max_batches is not None and args.max_batches < 1:
        raise ConfigError(f"--max-batches must be >= 1, got {args.max_batches}")
    model, _, config, path = load_trained(run_dir, args.checkpoint)
    set_threads(config["training"]["threads"])
    if args.data:
        config["data"]["path"] = str(Path(args.data).resolve())
    try:
        directory = data_dir(config)
        val_dataset(config, directory, model.vocab_size)  # fail early, with the fix, if missing
    except DataError as exc:
        raise DataError(
            f"{exc}; the run {run_dir} was trained on {config['data']['path'] or 'the default corpus'}"
            " - pass the prepared data directory with --data DIR"
        ) from None
    with launched(config) as launch:  # under torchrun the ranks share the batches
        announce(launch, "ddp")
        main = launch is None or launch.rank == 0
        val = val_dataset(config, directory, model.vocab_size)
        engine = Engine(
            model,
            _no_optimizer(model),
            [],
            val_data=val,
            device=resolve_device(config["training"]["device"]),
        )
        if main:
            print(f"checkpoint {path}")
        metrics = evaluate_with_progress(engine, max_batches=args.max_batches)
        del engine  # the DDP wrapper goes before the process group
    if main:
        print(f"val_loss {metrics['val_loss']:.4f}  val_ppl {metrics['val_ppl']:.3f}")
    return 0


def _no_optimizer(model):  # evaluate() never steps; the Engine still wants an optimizer
    import torch

    return torch.optim.SGD(model.parameters(), lr=0.0)
