"""The csv plugin: header, one row per step, evaluations folded in, exact resume."""

from __future__ import annotations

import copy
import csv

import pytest

from hookloop import PluginError, hookimpl
from hookloop.plugins.clip import GradClip
from hookloop.plugins.csv import COLUMNS, CSVLogger
from hookloop.plugins.eval import Eval
from hookloop.plugins.schedule import LRSchedule


def read(path):
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_header_and_one_row_per_step_written_in_batches(make_engine, tmp_path):
    seen_on_disk = []

    class Peek:  # reads the file right after csv's turn in each step
        after = ("csv",)

        @hookimpl
        def after_step(self, state):
            seen_on_disk.append(len(read(tmp_path / "metrics.csv")[1]))

    engine = make_engine(
        batches=20,
        run_dir=tmp_path,
        plugins=[GradClip(), LRSchedule(warmup_steps=1), CSVLogger(), Peek()],
    )
    engine.fit(max_steps=20)
    header, rows = read(tmp_path / "metrics.csv")
    assert tuple(header[: len(COLUMNS)]) == COLUMNS and header[len(COLUMNS) :] == ["clipped"]
    assert [int(r["step"]) for r in rows] == list(range(1, 21))
    # Alone, csv sends its rows to the host 16 at a time; the rest at the end of fit().
    assert seen_on_disk[:15] == [0] * 15 and seen_on_disk[15:] == [16] * 5
    assert all(
        r["loss"] and r["ema_loss"] and r["ppl"] and r["lr"] and r["grad_norm"] for r in rows
    )
    assert rows[0]["ema_loss"] == rows[0]["loss"] and rows[0]["val_loss"] == ""
    assert float(rows[1]["ema_loss"]) == pytest.approx(
        0.9 * float(rows[0]["loss"]) + 0.1 * float(rows[1]["loss"])
    )


def test_with_the_console_rows_travel_with_its_lines(make_engine, tmp_path):
    from hookloop.plugins.console import Console

    seen_on_disk = []

    class Peek:
        after = ("csv", "console")

        @hookimpl
        def after_step(self, state):
            seen_on_disk.append(len(read(tmp_path / "metrics.csv")[1]))

    engine = make_engine(
        batches=12, run_dir=tmp_path, plugins=[Console(every=5), CSVLogger(), Peek()]
    )
    engine.fit(max_steps=12)
    assert seen_on_disk == [0, 0, 0, 0, 5, 5, 5, 5, 5, 10, 10, 12]


def test_evaluations_fill_in_their_step_row_without_duplicates(make_engine, tmp_path):
    engine = make_engine(
        batches=3, run_dir=tmp_path, plugins=[Eval(every=2, final=True), CSVLogger(every=2)]
    )
    engine.fit(epochs=2)
    _, rows = read(tmp_path / "metrics.csv")
    steps = [int(r["step"]) for r in rows]
    assert steps == [2, 3, 4, 6]  # every 2, plus the epoch-end evaluation at step 3
    assert all(r["val_loss"] and r["val_ppl"] for r in rows)  # 2, 4 in-step; 3, 6 epoch end
    assert rows[1]["loss"]  # the added row for step 3 has the training values too


class Snapshot:
    """Plays the checkpoint plugin: captures what a checkpoint would hold at one step."""

    name = "checkpoint"

    def __init__(self, at: int, crash_at: int | None = None) -> None:
        self.at, self.crash_at, self.saved = at, crash_at, None

    @hookimpl
    def after_step(self, engine, state):
        if state.step == self.at:
            self.saved = {
                "model": copy.deepcopy(engine.model.state_dict()),
                "optimizer": copy.deepcopy(engine.optimizer.state_dict()),
                "counters": state.counters(),
                "plugins": engine.plugin_states(),
            }
        if state.step == self.crash_at:
            raise KeyboardInterrupt  # the process dies after writing rows beyond the snapshot


def test_resume_drops_rows_past_the_checkpoint_and_matches_an_uninterrupted_run(
    make_engine, tmp_path
):
    def plugins():
        return [GradClip(), LRSchedule(warmup_steps=2), CSVLogger(every=1)]

    full_dir, run_dir = tmp_path / "full", tmp_path / "run"
    make_engine(batches=10, run_dir=full_dir, plugins=plugins()).fit(max_steps=10)

    snap = Snapshot(at=4, crash_at=6)
    crashed = make_engine(batches=10, run_dir=run_dir, plugins=[*plugins(), snap])
    with pytest.raises(KeyboardInterrupt):
        crashed.fit(max_steps=10)
    assert [int(r["step"]) for r in read(run_dir / "metrics.csv")[1]] == [1, 2, 3, 4, 5, 6]

    resumed = make_engine(batches=10, run_dir=run_dir, seed=1, plugins=plugins())
    resumed.model.load_state_dict(snap.saved["model"])
    resumed.optimizer.load_state_dict(snap.saved["optimizer"])
    resumed.state.load_counters(snap.saved["counters"])
    resumed.train_data = crashed.train_data
    resumed.load_plugin_states(snap.saved["plugins"])
    resumed.fit(max_steps=10)

    full_header, full_rows = read(full_dir / "metrics.csv")
    header, rows = read(run_dir / "metrics.csv")
    assert header == full_header
    assert rows == full_rows  # same steps, once each, with bit-identical values


def test_without_run_dir_it_writes_nothing(make_engine):
    engine = make_engine(batches=2, plugins=[CSVLogger()])
    engine.fit(max_steps=2)
    assert engine.plugins["csv"].plugin.file is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"filename": "/tmp/x.csv"}, "filename"),
        ({"every": 0}, "every"),
        ({"ema_beta": -1}, "ema_beta"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(PluginError, match=f"csv: option {message}"):
        CSVLogger(**options)


def test_rows_waiting_for_a_device_copy_are_written_in_order_before_checkpoints_and_at_the_end(
    make_engine, tmp_path, monkeypatch
):
    # Stand-in for a GPU whose copies never land by themselves: rows queue up, and are
    # written before a checkpoint collects state, and at the end.
    from hookloop.plugins.stepvalues.hostcopy import HostCopy

    monkeypatch.setattr(HostCopy, "landed", property(lambda self: False))
    on_disk = {}

    class Peek:
        after = ("csv",)

        @hookimpl
        def after_step(self, engine, state):
            if state.step == 20:
                engine.plugin_states()  # a checkpoint: everything up to step 20 lands first
            on_disk[state.step] = [int(r["step"]) for r in read(tmp_path / "metrics.csv")[1]]

    engine = make_engine(
        batches=30, run_dir=tmp_path, plugins=[CSVLogger(), Eval(every=20), Peek()]
    )
    engine.fit(max_steps=30)
    assert on_disk[10] == [] and on_disk[17] == []  # sent at step 16, never landed
    assert on_disk[20] == list(range(1, 21)) and on_disk[25] == list(range(1, 21))
    _, rows = read(tmp_path / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    assert rows[19]["val_loss"] and rows[29]["val_loss"]  # step 20 in-step, 30 at the end


def test_resume_from_a_real_checkpoint_after_a_crash_gives_the_uninterrupted_file(
    make_engine, tmp_path
):
    from hookloop.checkpoint import latest_valid_checkpoint, load_checkpoint
    from hookloop.plugins.checkpoint import Checkpoint

    class Crash:  # dies in step 8 after its row, before checkpoint 8: rows 7, 8 are past 6
        name = "crash"

        @hookimpl
        def after_step(self, state):
            if state.step == 8:
                raise RuntimeError("power cut")

    def plugins(*extra):
        return [
            GradClip(),
            LRSchedule(warmup_steps=2, total_steps=12),
            Eval(every=3),
            CSVLogger(),
            Checkpoint(every=4, save_on_exception=False),
            *extra,
        ]

    make_engine(batches=12, run_dir=tmp_path / "full", plugins=plugins()).fit(max_steps=12)
    with pytest.raises(Exception, match="power cut"):
        make_engine(batches=12, run_dir=tmp_path / "run", plugins=plugins(Crash())).fit(
            max_steps=12
        )
    resumed = make_engine(batches=12, run_dir=tmp_path / "run", plugins=plugins())
    load_checkpoint(resumed, latest_valid_checkpoint(tmp_path / "run"))
    assert resumed.state.step == 6  # the best checkpoint at the step-6 evaluation is the latest
    resumed.fit(max_steps=12)
    assert read(tmp_path / "run" / "metrics.csv") == read(tmp_path / "full" / "metrics.csv")
