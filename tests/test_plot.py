"""`hookloop plot RUN_DIR`: a PNG of a real run's metrics.csv."""

from __future__ import annotations

import pytest

from hookloop.plugins.clip import GradClip
from hookloop.plugins.csv import CSVLogger
from hookloop.plugins.eval import Eval
from hookloop.plugins.schedule import LRSchedule

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plot_writes_a_png_matplotlib_reads_back(hookloop_cli, make_engine, tmp_path):
    image = pytest.importorskip("matplotlib.image")
    run_dir = tmp_path / "run"
    engine = make_engine(
        batches=12,
        run_dir=run_dir,
        plugins=[GradClip(), LRSchedule(warmup_steps=2), Eval(every=4), CSVLogger()],
    )
    engine.fit(max_steps=12)
    out = hookloop_cli("plot", "run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    png = run_dir / "metrics.png"
    assert out.stdout.strip() == str(png.relative_to(tmp_path))
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    pixels = image.imread(png)
    assert pixels.ndim == 3 and pixels.shape[0] > 400 and pixels.shape[1] == 800

    out = hookloop_cli("plot", "run", "--out", "elsewhere/p.png", cwd=tmp_path)
    assert out.returncode == 0 and (tmp_path / "elsewhere/p.png").read_bytes()[:8] == PNG_SIGNATURE


def test_plot_without_metrics_is_a_one_line_error(hookloop_cli, tmp_path):
    out = hookloop_cli("plot", "nowhere", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "hookloop plot: error: nowhere/metrics.csv does not exist; "
        "is this a run directory written with the csv plugin?"
    ]
