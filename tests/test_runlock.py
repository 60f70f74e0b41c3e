"""One writer per run directory: the lock, a second process refused, kill -9 leaves no stale
lock, and a real `hookloop train` holding it against another."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hookloop.errors import RunLockedError
from hookloop.runlock import (
    LOCK_FILE,
    holds_lock,
    lock_file,
    lock_run_dir,
    release_run_dir,
    unlock_file,
)

HOLDER = """
import sys, time
from hookloop.runlock import lock_run_dir
lock_run_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""


def _hold(run_dir: Path) -> subprocess.Popen:
    """A second process that takes the lock of `run_dir` and sleeps."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_the_lock_is_reentrant_in_a_process_and_released_on_request(tmp_path):
    assert lock_run_dir(tmp_path) == tmp_path.resolve() / LOCK_FILE
    assert lock_run_dir(tmp_path) == tmp_path.resolve() / LOCK_FILE  # already held: fine
    assert holds_lock(tmp_path)
    assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
    release_run_dir(tmp_path, remove=True)
    assert not holds_lock(tmp_path) and not (tmp_path / LOCK_FILE).exists()


def test_a_torchrun_rank_other_than_0_takes_no_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert lock_run_dir(tmp_path) is None and not (tmp_path / LOCK_FILE).exists()


def test_a_second_process_is_refused_naming_the_holder_and_kill_9_frees_it(tmp_path):
    holder = _hold(tmp_path)
    try:
        with pytest.raises(RunLockedError, match=rf"in use by .*\(PID {holder.pid}\)"):
            lock_run_dir(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    lock_run_dir(tmp_path)  # the kernel released it with the process: no stale lock
    release_run_dir(tmp_path)


def _hookloop(*args: str, cwd: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "HOOKLOOP_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "hookloop", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def _wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.1)


@pytest.mark.slow
def test_train_holds_the_lock_a_second_train_is_refused_and_kill_9_then_resume_works(
    tiny_lm_overrides, tmp_path
):
    long = [*_sets(tiny_lm_overrides), "--set", "training.max_steps=100000"]
    every = ["--set", "plugins.checkpoint.every_steps=2", "-p", "no:progress"]
    first = _hookloop("train", "--run-dir", "run", *long, *every, cwd=tmp_path)
    run = tmp_path / "run"
    try:
        _wait_for(lambda: (run / "checkpoints" / "latest").is_file())
        second = _hookloop("train", "--resume", "auto", "--run-dir", "run", cwd=tmp_path)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        assert err.count("\n") == 1 and f"(PID {first.pid})" in err, err
        assert "Traceback" not in err
        journal = (run / "journal.jsonl").read_text()
        assert '"event": "run_locked"' in journal
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    step = int((run / "checkpoints" / "latest").read_text().strip().split("-")[1])
    resumed = _hookloop(
        "train",
        "--resume",
        "auto",
        "--run-dir",
        "run",
        "--set",
        f"training.max_steps={step + 2}",
        "-p",
        "no:progress",
        cwd=tmp_path,
    )
    out, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err
    assert f"(step {step})" in out and f"done: 2 steps this launch (steps {step + 1} to" in out


def test_lock_file_waits_at_most_its_timeout_and_is_free_once_unlocked(tmp_path):
    path = tmp_path / ".tracker.lock"
    held = lock_file(path, timeout=0)
    with pytest.raises(TimeoutError, match=rf"still locked .* \(PID {os.getpid()}\)"):
        lock_file(path, timeout=0.1)
    unlock_file(held)
    unlock_file(lock_file(path, timeout=0))
