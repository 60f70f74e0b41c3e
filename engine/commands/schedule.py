"""Print the learning-rate curve of the configured run before training it: the rate at
sampled steps, and a sparkline of the whole curve. With --out FILE.png, also plot it
(needs matplotlib: `pip install '.[plot]' in the hookloop checkout`).

The curve comes from the `schedule` plugin's own `lr_at` function with the run's
`[plugins.schedule]` options, `[optimizer] lr` (the peak) and `[training] max_steps`, so it
is exactly what training will use.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hookloop.cli import add_config_arguments
from hookloop.errors import ConfigError

__all__ = ["Curve", "add_arguments", "curve", "run", "sample_steps", "sparkline"]

BLOCKS = "▁▂▃▄▅▆▇█"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `schedule` options: the config options, and how to show the curve."""
    add_config_arguments(parser)
    parser.add_argument(
        "--points",
        type=int,
        default=12,
        metavar="N",
        help="steps to list in the table (default 12)",
    )
    parser.add_argument(
        "--width",
        type=int,
        default=64,
        metavar="N",
        help="characters in the sparkline (default 64)",
    )
    parser.add_argument("--out", metavar="FILE.png", help="also plot the curve to this PNG")


@dataclass(frozen=True)
class Curve:
    """A run's learning-rate curve."""

    description: str
    total: int  # steps to show: the run's length
    warmup_steps: int
    lr: Callable[[int], float]  # update number (1-based) -> learning rate


def curve(config: dict[str, Any]) -> Curve:
    """The learning-rate curve of a resolved config.

    Raises:
        ConfigError: the run has no step limit and the schedule no total_steps.
        PluginError: a bad `[plugins.schedule]` option.
    """
    from hookloop.plugins.schedule import LRSchedule

    plugins = config.get("plugins", {})
    peak = float(config["optimizer"]["lr"])
    max_steps = int(config["training"].get("max_steps") or 0)
    if "schedule" in plugins.get("disable", []):
        if not max_steps:
            raise ConfigError("schedule: the run has no step limit (training.max_steps = 0)")
        return Curve(f"no schedule plugin: constant lr {peak:g}", max_steps, 0, lambda step: peak)
    schedule = LRSchedule(**plugins.get("schedule", {}))  # validates the options
    total = schedule.total_steps or max_steps
    if not total:
        raise ConfigError(
            "schedule: the run has no step limit (training.max_steps = 0); "
            "set plugins.schedule.total_steps to see the curve"
        )
    text = (
        f"{schedule.kind} schedule: warmup {schedule.warmup_steps} steps, peak lr {peak:g}, "
        f"min_lr {schedule.min_lr:g}, {total} steps"
    )
    return Curve(
        text,
        max(total, max_steps),
        schedule.warmup_steps,
        lambda step: schedule.lr(step, peak, total),
    )


def sample_steps(total: int, points: int, extra: tuple[int, ...] = ()) -> list[int]:
    """`points` steps spread evenly over 1..total, plus `extra` ones, sorted and unique."""
    points = max(points, 2)
    steps = {1, *(round(i * total / (points - 1)) for i in range(1, points)), *extra}
    return sorted(s for s in steps if 1 <= s <= total)


def sparkline(values: list[float]) -> str:
    """One block character per value, scaled from 0 to the largest value."""
    top = max(values) or 1.0
    return "".join(BLOCKS[min(int(v / top * len(BLOCKS)), len(BLOCKS) - 1)] for v in values)


def run(args: argparse.Namespace) -> int:
    """Print the table and sparkline; write the PNG if asked."""
    from hookloop.lm.config import config_from_args

    c = curve(config_from_args(args))
    total, lr = c.total, c.lr
    print(c.description)
    print(f"{'step':>8}  {'lr':>11}")
    for step in sample_steps(total, args.points, (c.warmup_steps,)):
        print(f"{step:>8}  {lr(step):>11.4e}")
    width = max(min(args.width, total), 1)
    print(sparkline([lr(s) for s in sample_steps(total, width)]))
    if args.out:
        from hookloop.plotting import pyplot

        plt = pyplot()
        stride = max(total // 5000, 1)
        steps = list(range(1, total + 1, stride))
        fig, ax = plt.subplots(figsize=(8, 3))
        ax.plot(steps, [lr(s) for s in steps], linewidth=1)
        ax.set(xlabel="step", ylabel="learning rate", title=c.description)
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=100)
        plt.close(fig)
        print(args.out)
    return 0
