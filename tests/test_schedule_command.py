"""`hookloop schedule`: the configured run's learning-rate curve, from the plugin's formula."""

from __future__ import annotations

import pytest

from hookloop.commands.schedule import curve, sample_steps, sparkline
from hookloop.errors import ConfigError, PluginError
from hookloop.plugins.schedule import lr_at


def config(max_steps=1000, lr=1e-3, **schedule):
    plugins = {"schedule": schedule} if schedule else {}
    return {"optimizer": {"lr": lr}, "training": {"max_steps": max_steps}, "plugins": plugins}


def test_curve_is_the_plugins_formula_with_the_run_settings():
    c = curve(config(warmup_steps=100, min_lr=1e-4))
    assert c.total == 1000 and c.warmup_steps == 100
    for step in (1, 50, 100, 101, 500, 999, 1000):
        assert c.lr(step) == lr_at(
            step, peak_lr=1e-3, warmup_steps=100, total_steps=1000, min_lr=1e-4
        )
    # by hand: warmup 1e-3 * k / 100, then 1e-4 + 9e-4 * (1 + cos(pi * (k - 100) / 900)) / 2
    by_hand = {
        1: 1e-5,
        50: 5e-4,
        100: 1e-3,
        325: 1e-4 + 9e-4 * (2 + 2**0.5) / 4,  # a quarter of the way: cos = sqrt(2)/2
        550: 5.5e-4,  # half way: cos = 0
        775: 1e-4 + 9e-4 * (2 - 2**0.5) / 4,
        1000: 1e-4,
        1200: 1e-4,  # past the end it stays at min_lr
    }
    assert {k: c.lr(k) for k in by_hand} == pytest.approx(by_hand, rel=1e-12)
    linear = curve(config(max_steps=110, kind="linear", warmup_steps=10, min_lr=0.0))
    assert [linear.lr(k) for k in (5, 10, 35, 60, 85, 110)] == pytest.approx(
        [5e-4, 1e-3, 7.5e-4, 5e-4, 2.5e-4, 0.0], abs=1e-15
    )
    assert (
        c.description
        == "cosine schedule: warmup 100 steps, peak lr 0.001, min_lr 0.0001, 1000 steps"
    )


def test_total_steps_option_and_disabled_plugin():
    c = curve(config(max_steps=500, kind="linear", total_steps=400))
    assert c.total == 500 and c.lr(400) == 0.0 and c.lr(500) == 0.0
    flat = curve({**config(max_steps=10), "plugins": {"disable": ["schedule"]}})
    assert [flat.lr(s) for s in (1, 10)] == [1e-3, 1e-3]


def test_no_step_limit_and_bad_options_are_clear_errors():
    with pytest.raises(ConfigError, match="set plugins.schedule.total_steps"):
        curve(config(max_steps=0))
    with pytest.raises(PluginError, match="schedule: option kind"):
        curve(config(kind="exp"))


def test_sampled_steps_and_sparkline():
    assert sample_steps(1000, 5, (100,)) == [1, 100, 250, 500, 750, 1000]
    assert sample_steps(3, 12) == [1, 2, 3]
    assert sparkline([0.0, 0.5, 1.0]) == "▁▅█"


def test_the_schedule_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, hookloop.plugins.schedule, hookloop.commands.schedule; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_command_prints_the_configured_curve_and_plots_it(hookloop_cli, tmp_path):
    (tmp_path / "run.toml").write_text(
        "[optimizer]\nlr = 0.001\n[training]\nmax_steps = 200\n"
        '[plugins.schedule]\nkind = "wsd"\nwarmup_steps = 20\nmin_lr = 1e-5\n'
    )
    out = hookloop_cli(
        "schedule", "-c", "run.toml", "--points", "11", "--out", "lr.png", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "wsd schedule: warmup 20 steps, peak lr 0.001, min_lr 1e-05, 200 steps"
    table = {int(s): float(lr) for s, lr in (line.split() for line in lines[2:-2])}
    # by hand: warmup to step 20, stable to step 160 (the last 20% decays), linear to 1e-5
    by_hand = {1: 5e-5, 20: 1e-3, 40: 1e-3, 60: 1e-3, 80: 1e-3, 100: 1e-3, 120: 1e-3}
    by_hand |= {140: 1e-3, 160: 1e-3, 180: 5.05e-4, 200: 1e-5}
    assert table == pytest.approx(by_hand, rel=1e-4)
    assert set(lines[-2]) <= set("▁▂▃▄▅▆▇█") and len(lines[-2]) == 64
    assert lines[-1] == "lr.png" and (tmp_path / "lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_command_reports_a_bad_option_in_one_line(hookloop_cli, tmp_path):
    out = hookloop_cli("schedule", "--set", "plugins.schedule.kind=step", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("hookloop schedule: error: schedule: option kind must be")
