"""The tensorboard plugin: scalars readable by TensorBoard, purge on resume, missing package."""

from __future__ import annotations

import sys

import pytest

from hookloop import PluginError
from hookloop.plugins.eval import Eval
from hookloop.plugins.schedule import LRSchedule
from hookloop.plugins.tensorboard import TensorBoard

pytest.importorskip("tensorboard")


def scalars(directory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_writes_train_and_val_scalars(make_engine, tmp_path):
    engine = make_engine(
        batches=6,
        run_dir=tmp_path,
        plugins=[LRSchedule(warmup_steps=1), Eval(every=3, final=False), TensorBoard(every=2)],
    )
    engine.fit(max_steps=6)
    found = scalars(tmp_path / "tensorboard")
    assert [s for s, _ in found["train/loss"]] == [2, 4, 6]
    assert {"train/ema_loss", "train/ppl", "train/lr"} <= set(found)
    assert [s for s, _ in found["val/val_loss"]] == [3, 6]


def test_log_dir_option(make_engine, tmp_path):
    make_engine(batches=2, plugins=[TensorBoard(log_dir=str(tmp_path / "tb"), every=1)]).fit(
        max_steps=2
    )
    assert [s for s, _ in scalars(tmp_path / "tb")["train/loss"]] == [1, 2]


def test_without_run_dir_or_log_dir_it_names_the_fix(make_engine):
    engine = make_engine(batches=2, plugins=[TensorBoard()])
    engine.fit(max_steps=1)  # not critical: disabled with a journal entry, training goes on
    [entry] = [e for e in engine.journal.entries if e["event"] == "plugin_disabled"]
    assert entry["plugin"] == "tensorboard" and "log_dir" in entry["reason"]


def test_missing_package_is_a_clear_plugin_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    with pytest.raises(
        PluginError, match=r"pip install '\.\[tensorboard\]'` in the hookloop checkout"
    ):
        TensorBoard()


def test_bad_option_is_named():
    with pytest.raises(PluginError, match="tensorboard: option every"):
        TensorBoard(every=0)
