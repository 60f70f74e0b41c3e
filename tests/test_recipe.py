"""build_run: the engine, model, data and run directory a config describes."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
from safetensors.torch import save_file

from hookloop.errors import CheckpointError, ConfigError, DataError
from hookloop.lm.config import load_config
from hookloop.lm.prepare import prepare_texts, read_meta
from hookloop.lm.recipe import (
    build_run,
    checkpoint_dir,
    data_dir,
    latest_run_dir,
    load_trained,
    new_run_dir,
    resolve_device,
    set_threads,
)


def test_build_run_writes_config_and_tokenizer(tmp_path, tiny_lm_overrides, lm_data):
    config = load_config(None, tiny_lm_overrides)
    run = build_run(config, tmp_path / "run")
    assert run.max_steps == 4 and run.epochs is None
    assert load_config(tmp_path / "run" / "config.toml") == config
    assert (tmp_path / "run" / "tokenizer.json").read_bytes() == (
        lm_data / "tokenizer.json"
    ).read_bytes()
    model = run.engine.model
    assert model.vocab_size == run.tokenizer.vocab_size == read_meta(lm_data)["vocab_size"]
    assert [g["weight_decay"] for g in run.engine.optimizer.param_groups] == [0.1, 0.0]
    assert run.engine.config is config


def test_building_again_leaves_unchanged_run_files_as_they_are(tmp_path, tiny_lm_overrides):
    """A resume rebuilds the run: unchanged files are not rewritten (another rank may be
    reading them), a changed config is replaced whole."""
    config = load_config(None, tiny_lm_overrides)
    build_run(config, tmp_path / "run")
    files = [tmp_path / "run" / name for name in ("config.toml", "tokenizer.json")]
    before = [(f.stat().st_ino, f.stat().st_mtime_ns) for f in files]
    build_run(config, tmp_path / "run")
    assert [(f.stat().st_ino, f.stat().st_mtime_ns) for f in files] == before
    config["training"]["max_steps"] = 7
    build_run(config, tmp_path / "run")
    assert load_config(files[0])["training"]["max_steps"] == 7
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")) == []


def test_fit_lowers_the_validation_loss(tmp_path, tiny_lm_overrides):
    config = load_config(None, [*tiny_lm_overrides, "training.max_steps=30", "optimizer.lr=1e-2"])
    run = build_run(config, None)
    before = run.engine.evaluate()["val_loss"]
    state = run.fit()
    assert state.step == 30 and state.tokens_seen == 30 * 8 * 32
    assert run.engine.evaluate()["val_loss"] < before - 0.5


def test_same_seed_same_weights(tiny_lm_overrides):
    def train():
        run = build_run(load_config(None, tiny_lm_overrides), None)
        run.fit()
        return run.engine.model.state_dict()

    a, b = train(), train()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_vocab_mismatch_and_bad_data(tmp_path, tiny_lm_overrides):
    with pytest.raises(ConfigError, match="smaller than the tokenizer's vocabulary"):
        build_run(load_config(None, [*tiny_lm_overrides, "model.vocab_size=3"]), None)
    with pytest.raises(DataError, match="not a prepared data directory"):
        build_run(load_config(None, [*tiny_lm_overrides, f"data.path={tmp_path}"]), None)


def test_ids_beyond_the_vocabulary_fail_before_training(tmp_path, tiny_lm_overrides):
    data = tmp_path / "data"
    prepare_texts("abcabcabc" * 20, "abcabc" * 20, data, tokenizer="byte")
    with pytest.raises(DataError, match="outside the vocabulary"):
        # a byte tokenizer's ids reach 'c' = 99; force a too small model vocabulary
        # by replacing the tokenizer with a char one of 3 ids
        (data / "tokenizer.json").write_text(json.dumps({"kind": "char", "chars": ["a", "b", "c"]}))
        build_run(
            load_config(None, [*tiny_lm_overrides, f"data.path={data}", "data.seq_len=4"]), None
        )


def test_run_dirs(tmp_path):
    assert latest_run_dir(tmp_path / "runs") is None
    first = new_run_dir(tmp_path / "runs")
    second = new_run_dir(tmp_path / "runs")
    assert first != second and first.parent == second.parent
    (first / "config.toml").write_text("")
    assert latest_run_dir(tmp_path / "runs") == first
    (second / "config.toml").write_text("")
    now = time.time()
    os.utime(first / "config.toml", (now + 10, now + 10))
    assert latest_run_dir(tmp_path / "runs") == first


def test_load_trained_reads_the_latest_checkpoint(tmp_path, tiny_lm_overrides):
    from hookloop.checkpoint import save_checkpoint

    no_ckpt = [*tiny_lm_overrides, 'plugins.disable=["checkpoint"]']
    run = build_run(load_config(None, no_ckpt), tmp_path / "run")
    with pytest.raises(CheckpointError, match="has no checkpoint that verifies"):
        load_trained(tmp_path / "run")
    run.fit()
    ckpt = save_checkpoint(run.engine, tmp_path / "run" / "checkpoints" / "step-00000004")
    model, tokenizer, config, path = load_trained(tmp_path / "run")
    assert path == ckpt and not model.training
    ids = torch.tensor([tokenizer.encode("def f1(x)").tolist()])
    torch.testing.assert_close(model(ids), run.engine.model.eval()(ids))
    with pytest.raises(CheckpointError, match="has no checkpoint step-00000009; it has: step-"):
        load_trained(tmp_path / "run", "step-00000009")
    # bare weights in the agreed layout load by name, and must fit the configured shape
    bare = tmp_path / "run" / "checkpoints" / "bare"
    bare.mkdir()
    save_file({"tok_emb.weight": torch.zeros(2, 2)}, bare / "model.safetensors")
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_trained(tmp_path / "run", "bare")


def test_resume_mid_epoch_gives_the_same_weights(tmp_path, tiny_lm_overrides):
    """Random windows, dropout and a schedule: a run stopped at step 3 and resumed from its
    checkpoint ends with the weights of a run never stopped."""
    from hookloop.checkpoint import load_checkpoint, save_checkpoint

    overrides = [
        *tiny_lm_overrides,
        "training.max_steps=6",
        "model.dropout=0.1",
        "plugins.schedule.total_steps=6",
        'plugins.disable=["checkpoint"]',
    ]
    straight = build_run(load_config(None, overrides), None)
    straight.fit()
    first = build_run(load_config(None, overrides), tmp_path / "a")
    first.engine.fit(max_steps=3)
    saved = save_checkpoint(first.engine, tmp_path / "a" / "checkpoints" / "step-00000003")
    resumed = build_run(load_config(None, overrides), tmp_path / "b")
    load_checkpoint(resumed.engine, saved)
    assert resumed.engine.state.epoch_batch == 3
    resumed.fit()
    expected = straight.engine.model.state_dict()
    for name, tensor in resumed.engine.model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_the_checkpoint_plugin_output_loads(tmp_path, tiny_lm_overrides):
    run = build_run(load_config(None, tiny_lm_overrides), tmp_path / "run")
    run.fit()
    model, _, _, path = load_trained(tmp_path / "run")
    assert path.parent == tmp_path / "run" / "checkpoints"
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(model(ids), run.engine.model.eval()(ids))


def test_device_and_threads():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_raw_text_as_data_path_is_prepared_once_into_a_cache(tmp_path, monkeypatch):
    from hookloop.lm.corpus import is_raw_text

    monkeypatch.setenv("HOOKLOOP_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "input.txt"
    text.write_text("to be or not to be\n" * 100)
    assert is_raw_text(text) and not is_raw_text(tmp_path / "missing")
    first = data_dir({"data": {"path": str(text)}})
    assert read_meta(first)["tokenizer"] == "char" and first.parent == tmp_path / "cache"
    assert data_dir({"data": {"path": str(text)}}) == first  # reused
    text.write_text("something else entirely\n" * 100)
    assert data_dir({"data": {"path": str(text)}}) != first  # keyed by the content
    prepared = tmp_path / "prepared"
    prepare_texts("abc\n" * 50, "abc\n" * 5, prepared, source="test")
    assert not is_raw_text(prepared) and data_dir({"data": {"path": str(prepared)}}) == prepared


def test_a_missing_checkpoint_name_lists_the_ones_there_are(tmp_path):
    (tmp_path / "checkpoints" / "step-00000004").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-00000008").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint step-9; it has: step-00000004, step"):
        checkpoint_dir(tmp_path, "step-9")
    with pytest.raises(CheckpointError, match="it has none yet"):
        checkpoint_dir(tmp_path / "checkpoints" / "step-00000004", "x")
