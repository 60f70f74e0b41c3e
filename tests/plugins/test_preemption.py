"""The `preemption` plugin: SIGTERM finishes the step, saves, stops; a second one aborts."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from hookloop import checkpoint as ckpt
from hookloop import hookimpl
from hookloop.errors import PluginError
from hookloop.plugins.preemption import Preemption


def wait_ready(procs, proc):
    line = procs.read_line(proc)
    assert line.startswith("READY"), procs.finish(proc)[1]
    return int(line.split()[1])


def test_sigterm_to_a_training_process_stops_cleanly_with_a_checkpoint(
    ckpt_worker, tmp_path, procs
):
    proc = ckpt_worker.popen(tmp_path, "--steps", "1000", "--every", "0", "--sleep", "0.01")
    wait_ready(procs, proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = procs.finish(proc)
    assert proc.returncode == 0, err
    assert "received SIGTERM: finishing step" in err
    assert f"hookloop train --resume auto --run-dir {tmp_path}" in err
    last = json.loads((tmp_path / "trace.jsonl").read_text().splitlines()[-1])["step"]
    assert 0 < last < 1000
    assert ckpt.latest_valid_checkpoint(tmp_path).name == ckpt.checkpoint_name(last)
    journal = [json.loads(x) for x in (tmp_path / "journal.jsonl").read_text().splitlines()]
    (entry,) = [e for e in journal if e["event"] == "signal_received"]
    assert entry["step"] == last and entry["signal"] == "SIGTERM"
    saved = [e["reason"] for e in journal if e["event"] == "checkpoint_saved" and e["step"] == last]
    # one save of the stopped state; an epoch-end "best" save of that same state may come first
    assert saved in (["preempted by SIGTERM"], ["best"]), saved


def test_a_second_signal_aborts_at_once(ckpt_worker, tmp_path, procs):
    slow_save = {"HOOKLOOP_CHECKPOINT_WRITE_DELAY": "20"}
    proc = ckpt_worker.popen(
        tmp_path, "--steps", "1000", "--every", "0", "--sleep", "0.01", env=slow_save
    )
    wait_ready(procs, proc)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # the step ends and the (slow) save begins
    start = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    _, err = procs.finish(proc, timeout=10)
    assert time.perf_counter() - start < 2
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "second SIGTERM: aborting now" in err
    assert ckpt.latest_valid_checkpoint(tmp_path) is None  # nothing half-written counts


class SignalAt:
    def __init__(self, step, sig=signal.SIGTERM):
        self.step, self.sig = step, sig

    @hookimpl
    def after_step(self, state):
        if state.step == self.step:
            signal.raise_signal(self.sig)


def test_saves_without_the_checkpoint_plugin_and_restores_handlers(make_engine, tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    engine = make_engine(batches=20, run_dir=tmp_path, plugins=[SignalAt(3), Preemption()])
    state = engine.fit(max_steps=10)
    assert state.step == 3 and state.should_stop == "received SIGTERM"
    assert ckpt.latest_valid_checkpoint(tmp_path).name == ckpt.checkpoint_name(3)
    assert signal.getsignal(signal.SIGTERM) is before


def test_handlers_are_restored_when_the_loop_raises(make_engine):
    class Boom:
        @hookimpl
        def after_step(self):
            raise RuntimeError("boom")

    before = signal.getsignal(signal.SIGINT)
    engine = make_engine(plugins=[Boom(), Preemption()])
    with pytest.raises(PluginError):
        engine.fit(max_steps=2)
    assert signal.getsignal(signal.SIGINT) is before


def test_unknown_signal_is_refused():
    with pytest.raises(PluginError, match="preemption: option signals has 'SIGNOPE'"):
        Preemption(signals=["SIGNOPE"])


def test_sigusr1_saves_and_requeues_the_slurm_job(make_engine, tmp_path, monkeypatch):
    """SLURM's warning signal stops like SIGTERM; with requeue the job goes back in the
    queue through `scontrol requeue $SLURM_JOB_ID` (a stand-in scontrol records its call)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "called"}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    run = tmp_path / "run"
    plugins = [SignalAt(2, signal.SIGUSR1), Preemption(requeue=True)]
    state = make_engine(batches=20, run_dir=run, plugins=plugins).fit(max_steps=10)
    assert state.step == 2 and state.should_stop == "received SIGUSR1"
    assert ckpt.latest_valid_checkpoint(run).name == ckpt.checkpoint_name(2)
    assert (tmp_path / "called").read_text().split() == ["requeue", "4242"]
    journal = (run / "journal.jsonl").read_text()
    assert '"event": "requeued"' in journal


def test_requeue_outside_slurm_only_warns(make_engine, tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    plugins = [SignalAt(1, signal.SIGUSR1), Preemption(requeue=True)]
    state = make_engine(batches=20, run_dir=tmp_path, plugins=plugins).fit(max_steps=10)
    assert state.step == 1
    assert ckpt.latest_valid_checkpoint(tmp_path).name == ckpt.checkpoint_name(1)
    with pytest.raises(PluginError, match="requeue must be true or false"):
        Preemption(requeue="yes")
