"""Resume after kill -9, at random moments and mid-write, and after a full disk: subprocesses.

The worker (conftest `ckpt_worker`) trains a tiny LM with random-window batches, dropout and
gradient accumulation, checkpointing through the default `checkpoint` plugin.
"""

from __future__ import annotations

import csv
import json
import random
import resource
import signal
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from hookloop.checkpoint import (
    LATEST,
    checkpoint_name,
    latest_valid_checkpoint,
    read_pointer,
    verify_checkpoint,
)

STEPS = 40


def final_tensors(run_dir, step=STEPS):
    path = run_dir / "checkpoints" / checkpoint_name(step)
    return load_file(path / "model.safetensors"), load_file(path / "optimizer.safetensors")


def losses(run_dir):
    """Loss per step, the last process's value winning where a killed one also logged it."""
    rows = [json.loads(line) for line in (run_dir / "trace.jsonl").read_text().splitlines()]
    return rows, {r["step"]: r["loss"] for r in rows}


def csv_rows(run_dir):
    """metrics.csv rows without the columns that measure time."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    timing = {"tokens_per_s", "step_ms", "mfu"}
    return [{k: v for k, v in row.items() if k not in timing} for row in rows]


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def straight(ckpt_worker, tmp_path_factory):
    """An uninterrupted run of STEPS steps."""
    run_dir = tmp_path_factory.mktemp("straight")
    rc, _, err = ckpt_worker.run(run_dir, "--steps", str(STEPS))
    assert rc == 0, err
    return run_dir


def test_kill_9_right_after_checkpoint_k_resumes_bitwise(ckpt_worker, straight, tmp_path):
    k = STEPS // 2  # an epoch ends there (5 steps per epoch): killed before its evaluation
    rc, _, _ = ckpt_worker.run(tmp_path, "--steps", str(STEPS), "--kill-after", str(k))
    assert rc == -signal.SIGKILL
    assert read_pointer(tmp_path / "checkpoints", LATEST).name == checkpoint_name(k)
    rc, out, err = ckpt_worker.run(tmp_path, "--steps", str(STEPS))
    assert rc == 0, err
    assert out.split() == ["READY", str(k)]

    for mine, theirs in zip(final_tensors(tmp_path), final_tensors(straight), strict=True):
        assert_bitwise_equal(mine, theirs)
    rows, by_step = losses(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # one row per step
    assert by_step == losses(straight)[1]
    mine = csv_rows(tmp_path)
    assert [int(r["step"]) for r in mine] == list(range(1, STEPS + 1))
    assert mine == csv_rows(straight)


@pytest.mark.slow
def test_ten_random_kills_including_mid_write_then_same_weights(
    ckpt_worker, straight, tmp_path, procs
):
    rng = random.Random(5)
    slow_writes = {"HOOKLOOP_CHECKPOINT_WRITE_DELAY": "0.02"}  # most of the time is in saves
    ready_steps, mid_write = [], 0
    for attempt in range(10):
        proc = ckpt_worker.popen(
            tmp_path, "--steps", str(STEPS), "--every", "1", "--sleep", "0.005", env=slow_writes
        )
        line = procs.read_line(proc)
        assert line.startswith("READY"), procs.finish(proc)[1]
        ready_steps.append(int(line.split()[1]))
        # On a loaded machine a step can outlast the window: widen it while nothing progresses.
        stuck = len(ready_steps) - 1 - ready_steps.index(ready_steps[-1])
        time.sleep(rng.uniform(0.0, 0.15) + 0.2 * stuck)
        checkpoints = tmp_path / "checkpoints"
        if attempt == 9 and not mid_write:  # no random kill hit a write: aim the last one
            deadline = time.monotonic() + 30
            while not any(p.name.startswith(".tmp-") for p in checkpoints.iterdir()):
                assert proc.poll() is None and time.monotonic() < deadline, "no write seen"
                time.sleep(0.002)
        proc.kill()
        proc.communicate()
        mid_write += checkpoints.is_dir() and any(
            p.name.startswith(".tmp-") for p in checkpoints.iterdir()
        )
    assert ready_steps == sorted(ready_steps) and 0 < ready_steps[-1] < STEPS, ready_steps
    assert mid_write >= 1, "no kill landed in the middle of a checkpoint write"

    rc, _, err = ckpt_worker.run(tmp_path, "--steps", str(STEPS))
    assert rc == 0, err
    for mine, theirs in zip(final_tensors(tmp_path), final_tensors(straight), strict=True):
        assert_bitwise_equal(mine, theirs)
    assert losses(tmp_path)[1] == losses(straight)[1]
    assert csv_rows(tmp_path) == csv_rows(straight)  # one row per step, same values
    print(f"resumed from steps {ready_steps}; {mid_write} kills landed mid-write")


def test_full_disk_keeps_previous_checkpoint_and_says_so(ckpt_worker, tmp_path, procs):
    ckpt_worker.build(tmp_path).fit(max_steps=4)
    before = latest_valid_checkpoint(tmp_path)
    assert before.name == checkpoint_name(4)
    state_json = (before / "state.json").stat().st_size

    def small_disk():  # every file this process writes stops growing at this size
        limit = state_json // 2
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = procs.run(
        [sys.executable, ckpt_worker.path, tmp_path, "--steps", "6"], preexec_fn=small_disk
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("hookloop.errors.CheckpointError: could not write checkpoint"), last
    assert "File too large" in last and "previous checkpoint is intact" in last
    assert read_pointer(tmp_path / "checkpoints", LATEST) == before
    verify_checkpoint(before)
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]
    assert not (tmp_path / "checkpoints" / checkpoint_name(6)).exists()
