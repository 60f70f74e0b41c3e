"""`hookloop doctor` as a subprocess on a tiny configured run."""

from __future__ import annotations

import pytest

pytest.importorskip("hookloop.lm.recipe")


@pytest.mark.slow
def test_a_healthy_default_config_passes_every_check(hookloop_cli, tiny_lm_args, tmp_path):
    out = hookloop_cli("doctor", *tiny_lm_args, "--set", "training.max_steps=200", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    statuses = {line.split()[1]: line.split()[0] for line in lines[:-1]}
    assert set(statuses.values()) == {"PASS"}, out.stdout
    for check in ("targets_shifted", "causal_mask", "overfit_one_batch", "schedule"):
        assert check in statuses
    assert lines[-1].endswith("0 fail")
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_a_failing_check_sets_the_exit_status(hookloop_cli, tiny_lm_args, tmp_path):
    out = hookloop_cli(
        "doctor",
        *tiny_lm_args,
        "--set",
        "training.max_steps=200",
        "--overfit-steps",
        "1",
        "--batches",
        "1",
        cwd=tmp_path,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert any(line.startswith("FAIL  overfit_one_batch") for line in out.stdout.splitlines())


def test_bad_doctor_options_are_one_line_errors(hookloop_cli, tmp_path):
    out = hookloop_cli("doctor", "--overfit-fraction", "2", cwd=tmp_path)
    assert out.returncode == 2 and "overfit-fraction" in out.stderr
    assert "Traceback" not in out.stderr
