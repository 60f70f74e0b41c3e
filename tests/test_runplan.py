"""What `hookloop train` decides before touching a run: resume with the run's own config,
refuse when nothing is valid, `--restart` moves the old files aside, a run killed before its
first checkpoint loses nothing."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hookloop.cli import main


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in (".lock", "journal.jsonl")
    }


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def trained(tiny_lm_overrides, tmp_path, monkeypatch):
    """A run trained 2 steps in this process, with a checkpoint; cwd is tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOOKLOOP_DISABLE_PLUGIN_AUTOLOAD", "1")
    args = ["train", "--run-dir", "run", *_sets(tiny_lm_overrides), "-p", "no:progress"]
    assert main([*args, "--set", "training.max_steps=2"]) == 0
    return tmp_path / "run"


def test_a_fresh_run_into_a_directory_holding_a_run_is_refused(trained, capsys):
    before = _snapshot(trained)
    assert main(["train", "--run-dir", "run"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--restart --run-dir run" in err
    assert _snapshot(trained) == before
    assert '"event": "run_refused"' in (trained / "journal.jsonl").read_text()


def test_resume_uses_the_runs_own_config_without_c(trained, capsys):
    args = ["train", "--resume", "auto", "--run-dir", "run", "--set", "training.max_steps=3"]
    assert main([*args, "-p", "no:progress"]) == 0  # no --set for the model: the run's own
    assert "resuming run from step-00000002 (step 2)" in capsys.readouterr().out


def test_resume_with_c_compares_it_to_the_runs_config(trained, tmp_path, capsys):
    (tmp_path / "other.toml").write_text("[model]\nn_layers = 3\n")
    before = _snapshot(trained)
    assert main(["train", "--resume", "auto", "--run-dir", "run", "-c", "other.toml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the config differs from the run's" in err
    assert "model.n_layers (1 in the run, 3 now)" in err and "--force" in err
    assert _snapshot(trained) == before

    job = tmp_path / "job.toml"  # the job script's config: the run's own, byte for byte
    job.write_text((trained / "config.toml").read_text())
    args = ["train", "-c", "job.toml", "--resume", "auto", "--run-dir", "run"]
    assert main([*args, "--set", "training.max_steps=3", "-p", "no:progress"]) == 0
    out = capsys.readouterr().out
    assert "resuming run from step-00000002 (step 2); config changes:" in out
    assert "training.max_steps: 2 -> 3  (applied)" in out


def test_the_same_command_starts_resumes_and_then_says_the_run_has_ended(
    tiny_lm_overrides, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOOKLOOP_DISABLE_PLUGIN_AUTOLOAD", "1")
    (tmp_path / "job.toml").write_text("[training]\nmax_steps = 4\n")
    command = ["train", "-c", "job.toml", "--resume", "auto", "--run-dir", "run"]
    command += [*_sets(tiny_lm_overrides), "-p", "no:progress"]

    assert main([*command, "--set", "training.max_steps=2"]) == 0  # a job cut short
    assert "no run in run yet: starting a fresh run" in capsys.readouterr().out
    assert main(command) == 0
    out = capsys.readouterr().out
    assert "resuming run from step-00000002 (step 2)" in out
    assert "done: 2 steps this launch (steps 3 to 4), 512 tokens" in out  # each count its own
    weights = (tmp_path / "run/checkpoints/step-00000004/model.safetensors").read_bytes()
    before = _snapshot(tmp_path / "run")
    assert main(command) == 0  # requeued once more: nothing left to do
    out = capsys.readouterr().out
    assert "run run already reached its end (step 4, training.max_steps = 4)" in out
    assert "--set training.max_steps=8" in out
    assert _snapshot(tmp_path / "run") == before
    assert (tmp_path / "run/checkpoints/step-00000004/model.safetensors").read_bytes() == weights


def test_resume_from_a_checkpoints_recorded_config_when_config_toml_is_gone(trained, capsys):
    (trained / "config.toml").unlink()
    args = ["train", "--resume", "auto", "--run-dir", "run", "--set", "training.max_steps=3"]
    assert main([*args, "-p", "no:progress"]) == 0
    assert "config changes:\n  training.max_steps: 2 -> 3  (applied)" in capsys.readouterr().out


def test_nothing_valid_to_resume_is_refused_then_restart_moves_the_files_aside(trained, capsys):
    for state in (trained / "checkpoints").glob("step-*/state.json"):
        state.write_text("{}")  # every checkpoint corrupt
    before = _snapshot(trained)
    journal = (trained / "journal.jsonl").read_text()
    assert main(["train", "--resume", "auto", "--run-dir", "run"]) == 2
    err = capsys.readouterr().err
    assert "has nothing valid to resume from" in err and "--restart --run-dir run" in err
    assert _snapshot(trained) == before
    after = (trained / "journal.jsonl").read_text()
    assert after.startswith(journal) and '"event": "run_refused"' in after[len(journal) :]

    args = ["train", "--resume", "auto", "--restart", "--run-dir", "run", "-p", "no:progress"]
    assert main(args) == 0
    assert "restarting run: its previous files are in run/previous-" in capsys.readouterr().out
    (aside,) = trained.glob("previous-*")
    assert _snapshot(aside) == before  # every old file kept, byte for byte


def test_restart_needs_a_run_and_a_directory_argument_must_not_be_a_file(tmp_path, capsys):
    os.chdir(tmp_path)
    assert main(["train", "--restart"]) == 2
    assert "--restart needs the run" in capsys.readouterr().err
    (tmp_path / "f").write_text("x")
    assert main(["train", "--run-dir", "f"]) == 2
    assert "--run-dir f is a file, not a directory" in capsys.readouterr().err
    assert (tmp_path / "f").read_text() == "x"


def test_a_failed_train_removes_only_the_folders_it_created(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    bad = ["--set", "data.path=nowhere"]
    assert main(["train", "--run-dir", "mine", *bad]) == 2
    assert (tmp_path / "mine").is_dir()  # the user's empty folder stays
    assert main(["train", "--run-dir", "a/b/c", *bad]) == 2
    assert not (tmp_path / "a").exists()  # nothing made before the data was found
    capsys.readouterr()


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_restarts_with_its_own_config(
    tiny_lm_overrides, tmp_path
):
    env = {**os.environ, "HOOKLOOP_DISABLE_PLUGIN_AUTOLOAD": "1"}

    def hookloop(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "hookloop", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    no_checkpoints = ["--set", "plugins.checkpoint.every_steps=0", "-p", "no:progress"]
    first = subprocess.Popen(
        [sys.executable, "-m", "hookloop", "train", "--run-dir", "run"]
        + [*_sets(tiny_lm_overrides), "--set", "training.max_steps=100000", *no_checkpoints]
        + ["--set", "plugins.schedule.warmup_steps=1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run = tmp_path / "run"
    deadline = time.monotonic() + 120
    while not ((run / "metrics.csv").is_file() and len(_rows(run / "metrics.csv")) >= 3):
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert not (run / "checkpoints").is_dir() or not any((run / "checkpoints").iterdir())
    before = _snapshot(run)
    rows = _rows(run / "metrics.csv")

    job = tmp_path / "job.toml"  # the job script's own config file
    job.write_text((run / "config.toml").read_text())
    relaunch = ["train", "-c", "job.toml", "--resume", "auto", "--run-dir", "run"]
    changed = hookloop(*relaunch, "--set", "model.n_layers=3")
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1, changed.stderr
    assert "the config differs from the run's" in changed.stderr
    assert _snapshot(run) == before  # no row lost, the config untouched

    again = hookloop(*relaunch, "--set", "training.max_steps=2", "-p", "no:progress")
    assert again.returncode == 0, again.stderr
    assert "run run stopped before its first exact checkpoint: starting it again" in again.stdout
    (aside,) = run.glob("previous-*")
    assert _rows(aside / "metrics.csv") == rows  # every row of the killed run is kept
    old = (aside / "config.toml").read_text().replace("max_steps = 100000", "max_steps = 2")
    assert (run / "config.toml").read_text() == old  # its own config, not the default
    assert [r["step"] for r in _rows(run / "metrics.csv")] == ["1", "2"]
    journal = (run / "journal.jsonl").read_text()
    assert '"event": "run_restarted"' in journal and "before its first exact" in journal


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stop_exits_128_plus_n_and_the_same_command_finishes_the_run(
    tiny_lm_overrides, tmp_path, sig
):
    env = {**os.environ, "HOOKLOOP_DISABLE_PLUGIN_AUTOLOAD": "1"}
    (tmp_path / "job.toml").write_text("[plugins.checkpoint]\nevery = 2\n")
    command = [sys.executable, "-m", "hookloop", "train", "-c", "job.toml", "--resume", "auto"]
    command += ["--run-dir", "run", *_sets(tiny_lm_overrides), "-p", "no:progress"]
    first = subprocess.Popen(
        [*command, "--set", "training.max_steps=100000"], cwd=tmp_path, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    run = tmp_path / "run"
    deadline = time.monotonic() + 120
    while not ((run / "metrics.csv").is_file() and len(_rows(run / "metrics.csv")) >= 3):
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.1)
    first.send_signal(sig)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 128 + sig, out + err  # as a shell reports a signal
    assert "Traceback" not in err
    assert "run run stopped before its end; continue it with" in out
    assert f"(exit status {128 + sig})" in out
    stopped = max(int(r["step"]) for r in _rows(run / "metrics.csv"))
    state = json.loads((run / "checkpoints" / f"step-{stopped:08d}" / "state.json").read_text())
    assert state["exact"] is True and state["counters"]["step"] == stopped

    again = subprocess.run(
        [*command, "--set", f"training.max_steps={stopped + 2}"],
        cwd=tmp_path, env=env, text=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resuming run from step-{stopped:08d} (step {stopped})" in again.stdout
