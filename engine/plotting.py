"""Draw a run's metrics.csv: training and validation loss, learning rate and gradient norm
against step, in one PNG. Used by `hookloop plot`, `hookloop train` (at the end) and the
tracker plugins (uploaded as an artifact).

Needs matplotlib: `pip install '.[plot]' in the hookloop checkout`.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from hookloop.errors import ConfigError, DataError

__all__ = ["PANELS", "plot_run", "pyplot", "read_metrics"]

PANELS = (
    ("loss", ("loss", "ema_loss", "val_loss")),
    ("learning rate", ("lr",)),
    ("gradient norm (before clipping)", ("grad_norm",)),
)


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend, or a ConfigError saying how to get it."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(
            "plotting needs matplotlib: pip install '.[plot]' in the hookloop checkout"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Each column of a metrics.csv as (step, value) pairs, skipping empty cells."""
    if not path.is_file():
        raise DataError(
            f"{path} does not exist; is this a run directory written with the csv plugin?"
        )
    series: dict[str, list[tuple[int, float]]] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            step = int(row["step"])
            for key, cell in row.items():
                if key != "step" and cell not in ("", None):
                    series.setdefault(key, []).append((step, float(cell)))
    if not series:
        raise DataError(f"{path} has no rows yet; train for a few steps first")
    return series


def plot_run(run_dir: Path, out: Path) -> Path:
    """Draw `run_dir/metrics.csv` into the PNG `out` and return its path.

    Raises:
        DataError: there is no metrics.csv, or it has no rows.
        ConfigError: matplotlib is not installed.
    """
    series = read_metrics(run_dir / "metrics.csv")
    plt = pyplot()
    panels = [(title, [k for k in keys if k in series]) for title, keys in PANELS]
    panels = [(title, keys) for title, keys in panels if keys]
    fig, axes = plt.subplots(
        len(panels), 1, sharex=True, figsize=(8, 2.6 * len(panels)), squeeze=False
    )
    for ax, (title, keys) in zip(axes[:, 0], panels, strict=True):
        for key in keys:
            steps, values = zip(*series[key], strict=True)
            style = {"marker": "o", "markersize": 3} if key == "val_loss" else {"linewidth": 1}
            ax.plot(steps, values, label=key, **style)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(run_dir.resolve().name)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
