"""Plot a run's metrics.csv: training and validation loss, learning rate and gradient norm
against step, in one PNG (RUN_DIR/metrics.png unless --out says otherwise). RUN_DIR
defaults to the latest run, as for `sample` and `eval`.

Examples:
    hookloop plot
    hookloop plot runs/20260101-120000 --out curves.png

Needs matplotlib: `pip install '.[plot]' in the hookloop checkout`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hookloop.errors import DataError
from hookloop.plotting import plot_run, pyplot, read_metrics

__all__ = ["add_arguments", "plot_run", "pyplot", "read_metrics", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `plot` options."""
    from hookloop.commands.sample import add_runs_argument

    parser.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        nargs="?",
        help="a run directory holding metrics.csv (default: the latest under --runs)",
    )
    add_runs_argument(parser)
    parser.add_argument("--out", metavar="FILE.png", help="where to write the PNG")


def run(args: argparse.Namespace) -> int:
    """Write the PNG and print its path."""
    from hookloop.lm.recipe import latest_run_dir

    run_dir = Path(args.run_dir) if args.run_dir else latest_run_dir(args.runs)
    if run_dir is None:
        raise DataError(f"no runs under {args.runs}/; pass RUN_DIR")
    print(plot_run(run_dir, Path(args.out) if args.out else run_dir / "metrics.png"))
    return 0
