"""`hookloop doctor` as a subprocess on a tiny configured run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("hookloop.lm.recipe")

TINY = [
    "--set",
    "model.n_layers=1",
    "--set",
    "model.d_model=32",
    "--set",
    "model.n_heads=2",
    "--set",
    "model.d_ff=64",
    "--set",
    "model.max_seq_len=32",
    "--set",
    "data.seq_len=32",
    "--set",
    "data.batch_size=8",
    "--set",
    "training.max_steps=200",
]


def doctor(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOOKLOOP_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.run(
        [sys.executable, "-m", "hookloop", "doctor", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


@pytest.mark.slow
def test_a_healthy_default_config_passes_every_check(tmp_path):
    out = doctor(*TINY, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    statuses = {line.split()[1]: line.split()[0] for line in lines[:-1]}
    assert set(statuses.values()) == {"PASS"}, out.stdout
    for check in ("targets_shifted", "causal_mask", "overfit_one_batch", "schedule"):
        assert check in statuses
    assert lines[-1].endswith("0 fail")
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_a_failing_check_sets_the_exit_status(tmp_path):
    out = doctor(*TINY, "--overfit-steps", "1", "--batches", "1", cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert any(line.startswith("FAIL  overfit_one_batch") for line in out.stdout.splitlines())


def test_bad_doctor_options_are_one_line_errors(tmp_path):
    out = doctor("--overfit-fraction", "2", cwd=tmp_path)
    assert out.returncode == 2 and "overfit-fraction" in out.stderr
    assert "Traceback" not in out.stderr
