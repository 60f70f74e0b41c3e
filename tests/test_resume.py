"""Which config changes a resume accepts, and which checkpoint `--resume` finds."""

from __future__ import annotations

import pytest

from hookloop import checkpointing as ckpt
from hookloop.errors import CheckpointError, ConfigError
from hookloop.resume import check_changes, config_changes, find_resume

SAVED = {"model": {"d_model": 64}, "training": {"max_steps": 100, "seed": 1},
         "optimizer": {"betas": [0.9, 0.95]}, "plugins": {"csv": {"every": 1}}}


def test_changes_are_listed_by_dotted_key_and_classified():
    new = {"model": {"d_model": 64}, "training": {"max_steps": 200, "seed": 2},
           "optimizer": {"betas": (0.9, 0.95)}, "plugins": {"csv": {"every": 5}, "eval": {}}}
    changes = config_changes(SAVED, new)
    assert [(c.key, c.safe) for c in changes] == [
        ("plugins.csv.every", True), ("plugins.eval", True), ("training.max_steps", True),
        ("training.seed", False)]
    with pytest.raises(ConfigError, match=r"changed training.seed is not safe.*--force"):
        check_changes(changes, force=False)
    lines = check_changes(changes, force=True)
    assert lines[2] == "  training.max_steps: 100 -> 200  (applied)"
    assert lines[3] == "  training.seed: 1 -> 2  (FORCED)"
    assert check_changes(config_changes(SAVED, SAVED), force=False) == []


def test_find_resume_auto_path_and_fallback(make_engine, tmp_path):
    run = tmp_path / "run"
    assert find_resume("auto", run, tmp_path) == (run, None)  # nothing yet: fresh start
    engine = make_engine(run_dir=run)
    engine.fit(max_steps=1)
    first = ckpt.save_checkpoint(engine, run / "checkpoints" / ckpt.checkpoint_name(1))
    engine.fit(max_steps=2)
    second = ckpt.save_checkpoint(engine, run / "checkpoints" / ckpt.checkpoint_name(2))
    assert find_resume("auto", run, tmp_path) == (run, second)
    assert find_resume(str(first), None, tmp_path) == (run, first)
    assert find_resume(str(run), None, tmp_path) == (run, second)
    (second / "optimizer.safetensors").write_bytes(b"truncated")
    assert find_resume("auto", run, tmp_path) == (run, first)  # reported, previous used
    assert any(e["event"] == "checkpoint_invalid" for e in engine.journal.read())
    with pytest.raises(CheckpointError, match="is corrupt"):
        find_resume(str(second), None, tmp_path)
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        find_resume(str(tmp_path / "nope"), None, tmp_path)
