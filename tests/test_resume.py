"""Which config changes a resume accepts, and which checkpoint `--resume` finds."""

from __future__ import annotations

import csv

import pytest
import torch
from safetensors.torch import load_file

from hookloop import checkpoint as ckpt
from hookloop.cli import build_parser
from hookloop.errors import CheckpointError, ConfigError
from hookloop.lm.resume import check_changes, config_changes, find_resume

SAVED = {
    "model": {"d_model": 64},
    "training": {"max_steps": 100, "seed": 1},
    "optimizer": {"betas": [0.9, 0.95]},
    "plugins": {"csv": {"every": 1}},
}


def test_changes_are_listed_by_dotted_key_and_classified():
    new = {
        "model": {"d_model": 64},
        "training": {"max_steps": 200, "seed": 2},
        "optimizer": {"betas": (0.9, 0.95)},
        "plugins": {"csv": {"every": 5}, "eval": {}},
    }
    changes = config_changes(SAVED, new)
    assert [(c.key, c.safe) for c in changes] == [
        ("plugins.csv.every", True),
        ("plugins.eval", True),
        ("training.max_steps", True),
        ("training.seed", False),
    ]
    with pytest.raises(
        ConfigError, match=r"differs .*: training.seed \(1 in the run, 2 now\).*--force"
    ):
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


# --- the command line: hookloop train --resume, hookloop verify-resume -------------------------


def test_train_resume_continues_exactly_and_checks_config_changes(
    hookloop_cli, tiny_lm_data_args, tmp_path
):
    common = [
        *tiny_lm_data_args,
        "--set",
        "training.accumulate=2",
        "--set",
        "model.dropout=0.1",
        "--set",
        "plugins.schedule.total_steps=8",
        "-p",
        "no:progress",
    ]
    straight = hookloop_cli(
        "train", "--run-dir", "a", *common, "--set", "training.max_steps=8", cwd=tmp_path
    )
    assert straight.returncode == 0, straight.stderr
    first = hookloop_cli(
        "train", "--run-dir", "b", *common, "--set", "training.max_steps=4", cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr

    again = hookloop_cli("train", "--run-dir", "b", *common, cwd=tmp_path)  # forgot --resume
    assert again.returncode == 2 and "already holds a run" in again.stderr
    refused = hookloop_cli(
        "train", "--resume", "auto", "--run-dir", "b", "--set", "model.n_layers=2", cwd=tmp_path
    )
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "the config differs from the run's in what defines the model" in refused.stderr
    assert "model.n_layers (1 in the run, 2 now); nothing was changed" in refused.stderr

    resumed = hookloop_cli(
        "train", "--resume", "auto", "--run-dir", "b", "--set", "training.max_steps=8", cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming b from step-00000004 (step 4); config changes:" in resumed.stdout
    assert "training.max_steps: 4 -> 8  (applied)" in resumed.stdout
    a = load_file(tmp_path / "a" / "checkpoints" / "step-00000008" / "model.safetensors")
    b = load_file(tmp_path / "b" / "checkpoints" / "step-00000008" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    timing = ("tokens_per_s", "step_ms", "mfu")

    def rows(run):
        with open(tmp_path / run / "metrics.csv", newline="") as f:
            return [{k: v for k, v in r.items() if k not in timing} for r in csv.DictReader(f)]

    b_rows, a_rows = rows("b"), rows("a")
    assert [int(r["step"]) for r in b_rows] == list(range(1, 9))
    assert b_rows[3]["val_loss"] and not a_rows[3]["val_loss"]  # the first run's final eval
    b_rows[3].update(val_loss="", val_ppl="")
    assert b_rows == a_rows


def test_verify_resume_reports_equal(hookloop_cli, tiny_lm_data_args, tmp_path):
    out = hookloop_cli(
        "verify-resume",
        *tiny_lm_data_args,
        "--set",
        "model.dropout=0.1",
        "--set",
        "training.accumulate=2",
        "--steps",
        "6",
        "-p",
        "no:progress",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "loss trace: equal at all 6 steps" in out.stdout
    assert "result: EQUAL" in out.stdout


def test_verify_resume_finds_the_first_differing_step(
    tiny_lm_data_args, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(
        "hookloop.checkpoint.read.set_rng_state", lambda rng: None
    )  # a broken resume
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(
        [
            "verify-resume",
            *tiny_lm_data_args,
            "--set",
            "model.dropout=0.2",
            "--steps",
            "4",
            "-p",
            "no:progress",
        ]
    )
    code = args.run(args)  # in process (so the patch applies), logging left unconfigured
    out = capsys.readouterr().out
    assert code == 1, out
    assert "loss trace: DIFFERENT from step 3" in out and "result: DIFFERENT" in out


def test_a_batch_size_change_that_keeps_the_global_batch_is_accepted():
    """2 ranks x 16 resumed on 1 rank x 32 reads the same windows: safe; a changed global
    batch (also through the number of ranks alone) is refused with the batch that fits."""
    from hookloop.errors import ConfigError
    from hookloop.lm.config import default_config
    from hookloop.lm.resume import check_changes, check_global_batch, config_changes

    saved, new = default_config(), default_config()
    saved["data"]["batch_size"], new["data"]["batch_size"] = 16, 32
    changes = check_global_batch(
        config_changes(saved, new), saved, new, saved_world=2, world=1, force=False
    )
    assert check_changes(changes, force=False) == ["  data.batch_size: 16 -> 32  (applied)"]
    with pytest.raises(
        ConfigError, match=r"from 32 windows \(16 x 2 ranks\) to 64.*batch_size = 8 so it stays 32"
    ):
        check_global_batch(config_changes(saved, saved), saved, saved, saved_world=2, world=4,
                           force=False)  # fmt: skip
    with pytest.raises(ConfigError, match="run on a number of ranks that divides 32"):
        check_global_batch([], saved, saved, saved_world=2, world=3, force=False)
    assert check_global_batch([], saved, saved, saved_world=2, world=3, force=True) == []
