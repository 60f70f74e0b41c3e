"""The checkpoint format, exact resume in a fresh engine, verification and refusals."""

from __future__ import annotations

import errno
import hashlib
import json
import random
import re
import zlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hookloop import checkpoint as ckpt
from hookloop.errors import CheckpointError


def params(engine):
    return {k: v.clone() for k, v in engine.model.state_dict().items()}


def same_params(a, b):
    a, b = params(a), params(b)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_format_files_keys_and_a_model_file_any_safetensors_reader_loads(ckpt_worker, tmp_path):
    engine = ckpt_worker.build(tmp_path)
    engine.fit(max_steps=4)
    path = tmp_path / "checkpoints" / ckpt.checkpoint_name(4)
    assert sorted(p.name for p in path.iterdir()) == [
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
    ]
    fresh = ckpt_worker.namespace["TinyLM"]()
    fresh.load_state_dict(load_file(path / "model.safetensors"))  # strict: every key, once
    assert all(
        torch.equal(a, b)
        for a, b in zip(fresh.parameters(), engine.model.parameters(), strict=True)
    )
    opt = load_file(path / "optimizer.safetensors")
    assert sorted(opt) == [
        f"state.{i}.{n}" for i in range(3) for n in ("exp_avg", "exp_avg_sq", "step")
    ]

    state = json.loads((path / "state.json").read_text())
    assert state["format_version"] == 1 and state["exact"] is True
    assert state["counters"] == {
        "step": 4,
        "epoch": 0,
        "epoch_batch": 8,
        "micro_step": 8,
        "tokens_seen": 256,
    }
    assert state["optimizer"]["param_groups"][0]["betas"] == {"__tuple__": [0.9, 0.95]}
    assert set(state["rng"]) >= {"torch", "numpy", "python"}
    assert {"checkpoint", "csv"} <= set(state["plugins"]) and "trace" in state["plugin_versions"]
    assert state["plugin_versions"]["checkpoint"].startswith("hookloop ")
    assert state["torch_version"] == torch.__version__ and "loss" in state["metrics"]
    for name, info in state["files"].items():
        assert info["bytes"] == (path / name).stat().st_size
    assert ckpt.read_pointer(tmp_path / "checkpoints", ckpt.LATEST) == path


def test_clean_stop_then_resume_in_a_fresh_engine_is_bitwise_exact(ckpt_worker, tmp_path):
    straight = ckpt_worker.build(tmp_path / "a")
    straight.fit(max_steps=16)  # crosses three epochs of 5 steps each
    stop = ckpt_worker.namespace["Misbehave"](stop_at=7)
    first = ckpt_worker.build(tmp_path / "b", misbehave=stop)
    first.fit(max_steps=16)  # a clean stop mid-epoch, saved at the end
    torch.manual_seed(123), random.seed(123), np.random.seed(123)  # state a new process has
    second = ckpt_worker.build(tmp_path / "b", seed=99)
    found = ckpt.latest_valid_checkpoint(tmp_path / "b")
    assert found.name == ckpt.checkpoint_name(7)
    ckpt.load_checkpoint(second, found)
    assert second.state.counters() == first.state.counters()
    second.fit(max_steps=16)
    pairs = zip(straight.model.parameters(), second.model.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    a = straight.optimizer.state_dict()["state"]
    b = second.optimizer.state_dict()["state"]
    assert all(torch.equal(a[i][n], b[i][n]) for i in a for n in a[i])
    trace = [json.loads(x) for x in (tmp_path / "b" / "trace.jsonl").read_text().splitlines()]
    assert trace == [
        json.loads(x) for x in (tmp_path / "a" / "trace.jsonl").read_text().splitlines()
    ]
    csv_b = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    assert [int(row.split(",")[0]) for row in csv_b[1:]] == list(range(1, 17))  # one row per step


def test_tied_weights_are_stored_once_and_restored(make_engine, tmp_path):
    engine = make_engine()
    engine.model.fc2.weight = engine.model.fc1.weight
    engine.optimizer = torch.optim.SGD(engine.model.parameters(), lr=0.1)
    engine.fit(max_steps=2)
    path = ckpt.save_checkpoint(engine, tmp_path / "c")
    assert sorted(load_file(path / "model.safetensors")) == ["fc1.bias", "fc1.weight", "fc2.bias"]
    assert json.loads((path / "state.json").read_text())["model"]["aliases"] == {
        "fc2.weight": "fc1.weight"
    }
    before = params(engine)
    with torch.no_grad():
        engine.model.fc1.weight.zero_()
    ckpt.load_checkpoint(engine, path)
    assert torch.equal(engine.model.fc2.weight, before["fc2.weight"])
    assert engine.model.fc2.weight is engine.model.fc1.weight


def test_corrupt_checkpoint_is_reported_and_the_previous_one_used(ckpt_worker, tmp_path):
    engine = ckpt_worker.build(tmp_path)
    engine.fit(max_steps=4)
    bad = tmp_path / "checkpoints" / ckpt.checkpoint_name(4)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is corrupt: model.safetensors does not match"):
        ckpt.load_checkpoint(engine, bad)
    found = ckpt.latest_valid_checkpoint(tmp_path, journal=engine.journal)
    assert found.name == ckpt.checkpoint_name(2)
    (entry,) = [e for e in engine.journal.read() if e["event"] == "checkpoint_invalid"]
    assert entry["step"] == 4 and "corrupt" in entry["reason"]

    (found / "state.json").unlink()  # a partial checkpoint
    assert ckpt.latest_valid_checkpoint(tmp_path) is None
    with pytest.raises(CheckpointError, match="is partial: it has no state.json"):
        ckpt.verify_checkpoint(found)


def test_mismatched_model_shape_is_refused_and_nothing_changes(ckpt_worker, tmp_path):
    ckpt_worker.build(tmp_path / "run").fit(max_steps=2)
    path = ckpt.latest_valid_checkpoint(tmp_path / "run")
    other = ckpt_worker.build(tmp_path / "other")
    other.model.mix = torch.nn.Linear(16, 16, bias=False)
    before = params(other)
    with pytest.raises(CheckpointError) as info:
        ckpt.load_checkpoint(other, path)
    message = str(info.value)
    assert "does not match the configured model: mix.bias is not in the model" in message
    assert "\n" not in message
    assert all(torch.equal(v, params(other)[k]) for k, v in before.items())
    assert other.state.step == 0


def test_different_vocabulary_is_refused(ckpt_worker, tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"vocab": "abc"}')
    engine = ckpt_worker.build(tmp_path)
    engine.fit(max_steps=2)
    path = ckpt.latest_valid_checkpoint(tmp_path)
    assert json.loads((path / "state.json").read_text())["tokenizer"]["file"] == "tokenizer.json"
    (tmp_path / "tokenizer.json").write_text('{"vocab": "abd"}')
    with pytest.raises(CheckpointError, match="different vocabulary"):
        ckpt.load_checkpoint(ckpt_worker.build(tmp_path), path)


def test_disk_full_during_a_save_leaves_the_previous_checkpoint(make_engine, tmp_path, monkeypatch):
    engine = make_engine()
    engine.fit(max_steps=1)
    first = ckpt.save_checkpoint(engine, tmp_path / "checkpoints" / "step-00000001")
    engine.fit(max_steps=2)

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("hookloop.checkpoint.write.write_file", full)
    with pytest.raises(CheckpointError) as info:
        ckpt.save_checkpoint(engine, tmp_path / "checkpoints" / "step-00000002")
    assert re.fullmatch(
        r"could not write checkpoint \S+: No space left on device \(is the disk "
        r"full\?\); the previous checkpoint is intact",
        str(info.value),
    )
    assert ckpt.latest_valid_checkpoint(tmp_path) == first
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "latest",
        "step-00000001",
    ]


def test_a_crash_mid_swap_or_mid_write_is_repaired_on_the_next_save(make_engine, tmp_path):
    engine = make_engine()
    engine.fit(max_steps=1)
    checkpoints = tmp_path / "checkpoints"
    path = ckpt.save_checkpoint(engine, checkpoints / "step-00000001")
    path.rename(checkpoints / ".old-step-00000001")  # killed between the two renames
    (checkpoints / ".tmp-step-00000002-999999-abcd").mkdir()  # killed while writing
    (checkpoints / ".prune-step-00000000-999999-abcd").mkdir()  # killed while pruning
    assert ckpt.latest_valid_checkpoint(tmp_path) == checkpoints / ".old-step-00000001"
    ckpt.recover_partial(checkpoints)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step-00000001"]
    ckpt.verify_checkpoint(path)
    again = ckpt.save_checkpoint(engine, path)  # same step again: swapped in atomically
    assert again == path and sorted(p.name for p in checkpoints.iterdir()) == [
        "latest",
        "step-00000001",
    ]


def test_fp16_grad_scaler_state_is_saved_and_restored(make_engine, tmp_path):
    """The guide promises the fp16 GradScaler comes back on resume (on the CPU here)."""
    engine = make_engine(precision="fp16")
    batches = engine.train_data
    batches[1] = (batches[1][0] * 1e30, batches[1][1])  # overflows in fp16: the scale backs off
    engine.fit(max_steps=5)
    saved = engine.scaler.state_dict()
    default = torch.amp.GradScaler("cpu").state_dict()
    assert saved["scale"] == default["scale"] / 2 and saved["_growth_tracker"] == 3
    path = ckpt.save_checkpoint(engine, tmp_path / "checkpoints" / ckpt.checkpoint_name(5))
    on_disk = json.loads((path / "state.json").read_text())["scaler"]
    assert on_disk == saved

    fresh = make_engine(precision="fp16", seed=3)
    fresh.train_data = batches
    assert fresh.scaler.state_dict()["scale"] == default["scale"]
    ckpt.load_checkpoint(fresh, path)
    assert fresh.scaler.state_dict() == saved
    engine.fit(max_steps=6)  # the next step, from one state in both

    fresh.fit(max_steps=6)
    assert fresh.scaler.state_dict() == engine.scaler.state_dict()
    assert all(
        torch.equal(p, q)
        for p, q in zip(engine.model.parameters(), fresh.model.parameters(), strict=True)
    )


def test_the_recipe_model_file_loads_into_a_fresh_tiny_transformer(tiny_lm_overrides, tmp_path):
    from hookloop.lm.config import load_config
    from hookloop.lm.recipe import build_model, build_run

    config = load_config(None, [*tiny_lm_overrides, 'plugins.disable=["progress"]'])
    run = build_run(config, tmp_path)
    run.fit()
    path = ckpt.latest_valid_checkpoint(tmp_path)
    fresh = build_model(config, run.tokenizer.vocab_size)
    fresh.load_state_dict(load_file(path / "model.safetensors"))  # strict, nothing else needed
    trained = run.engine.model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in fresh.state_dict().items())
    assert json.loads((path / "state.json").read_text())["model"]["aliases"] == {}


def test_a_damaged_pointer_is_ignored_and_never_leaves_the_checkpoints_folder(tmp_path):
    from hookloop.checkpoint import read_pointer

    tmp_path.joinpath("latest").write_bytes(b"\xff\xfe")
    assert read_pointer(tmp_path, "latest") is None
    for target in ("../../etc", "..", "", "a/b"):
        tmp_path.joinpath("latest").write_text(target + "\n")
        assert read_pointer(tmp_path, "latest") is None
    tmp_path.joinpath("latest").write_text("step-00000002\n")
    assert read_pointer(tmp_path, "latest") == tmp_path / "step-00000002"


def test_a_multi_rank_state_json_passes_the_schema_and_a_damaged_rank_is_named(
    ckpt_worker, tmp_path
):
    """Under torchrun `rng_ranks` is a list with one RNG state per rank (see test_torchrun)."""
    from hookloop.checkpoint.schema import check_state

    engine = ckpt_worker.build(tmp_path)
    engine.fit(max_steps=2)
    path = tmp_path / "checkpoints" / ckpt.checkpoint_name(2)
    state = json.loads((path / "state.json").read_text())
    state.update(world_size=2, rng_ranks=[state["rng"], dict(state["rng"])])
    assert check_state(state, path) is state
    state["rng_ranks"][1] = {**state["rng"], "numpy": [1]}
    with pytest.raises(CheckpointError, match=r"field rng_ranks\.1\.numpy is not a generator"):
        check_state(state, path)


def _reference(algorithm, data):
    if algorithm == "crc32":
        return f"crc32:{zlib.crc32(data):08x}"
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("algorithm", ["crc32", "sha256"])
def test_each_checksum_is_recorded_verified_and_catches_damage(make_engine, tmp_path, algorithm):
    engine = make_engine()
    engine.fit(max_steps=1)
    path = ckpt.save_checkpoint(engine, tmp_path / "c", checksum=algorithm)
    files = json.loads((path / "state.json").read_text())["files"]
    for name, info in files.items():
        data = (path / name).read_bytes()
        assert info == {"checksum": _reference(algorithm, data), "bytes": len(data)}
    fresh = make_engine(seed=3)
    ckpt.load_checkpoint(fresh, path)
    assert same_params(fresh, engine)

    model = path / "model.safetensors"
    data = model.read_bytes()
    model.write_bytes(data[:-9] + bytes([data[-9] ^ 0x10]) + data[-8:])
    with pytest.raises(
        CheckpointError, match=rf"model.safetensors does not match its checksum \({algorithm}\)"
    ):
        ckpt.verify_checkpoint(path)
    model.write_bytes(data[:-4])
    with pytest.raises(CheckpointError, match=r"has \d+ bytes, state.json says \d+ \(truncated"):
        ckpt.verify_checkpoint(path)
    state = json.loads((path / "state.json").read_text())
    del state["files"]["model.safetensors"][
        "bytes"
    ]  # `bytes` is optional: the checksum still sees it
    (path / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=rf"does not match its checksum \({algorithm}\)"):
        ckpt.load_checkpoint(fresh, path)


def test_a_checkpoint_in_the_older_sha256_format_loads_and_is_verified(make_engine, tmp_path):
    """Checkpoints written before the checksum was configurable hold `files.<name>.sha256`."""
    engine = make_engine()
    engine.fit(max_steps=2)
    path = ckpt.save_checkpoint(engine, tmp_path / "checkpoints" / ckpt.checkpoint_name(2))
    state = json.loads((path / "state.json").read_text())
    state["files"] = {
        name: {
            "sha256": hashlib.sha256((path / name).read_bytes()).hexdigest(),
            "bytes": info["bytes"],
        }
        for name, info in state["files"].items()
    }
    (path / "state.json").write_text(json.dumps(state, indent=1))
    fresh = make_engine(seed=3)
    ckpt.load_checkpoint(fresh, path)
    assert same_params(fresh, engine)
    assert ckpt.latest_valid_checkpoint(tmp_path) == path

    optimizer = path / "optimizer.safetensors"
    data = bytearray(optimizer.read_bytes())
    data[len(data) // 2] ^= 0x01
    optimizer.write_bytes(bytes(data))
    with pytest.raises(
        CheckpointError, match=r"optimizer.safetensors does not match its checksum \(sha256\)"
    ):
        ckpt.verify_checkpoint(path)
    assert ckpt.latest_valid_checkpoint(tmp_path) is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"checksum": "md5:" + "0" * 32}, r"checksum names the unknown algorithm 'md5'"),
        (
            {"checksum": "crc32:0123"},
            r'checksum must be "<algorithm>:<hex digest>" with an algorithm of crc32, sha256',
        ),
        ({"checksum": 7}, r"checksum must be .*got 7"),
        ({"bytes": 10}, r"checksum must be .*got None"),
        ({"sha256": "abc"}, r"sha256 must be a SHA-256 hex digest, got 'abc'"),
        ({"checksum": "crc32:01234567", "bytes": -1}, r"bytes must be an integer >= 0, got -1"),
    ],
)
def test_a_malformed_file_entry_in_state_json_is_named(make_engine, tmp_path, entry, message):
    from hookloop.checkpoint.schema import check_state

    engine = make_engine()
    engine.fit(max_steps=1)
    path = ckpt.save_checkpoint(engine, tmp_path / "c")
    state = json.loads((path / "state.json").read_text())
    state["files"]["optimizer.safetensors"] = entry
    with pytest.raises(CheckpointError, match=r"field files\.optimizer\.safetensors\." + message):
        check_state(state, path)


def test_the_checkpoint_plugin_option_picks_the_checksum(make_engine, tmp_path):
    from hookloop.errors import PluginError
    from hookloop.plugins.checkpoint import Checkpoint

    with pytest.raises(
        PluginError, match="option checksum must be one of crc32, sha256, got 'md5'"
    ):
        Checkpoint(checksum="md5")
    engine = make_engine(run_dir=tmp_path, plugins=[Checkpoint(every=2, checksum="sha256")])
    engine.fit(max_steps=2)
    path = ckpt.latest_valid_checkpoint(tmp_path)
    files = json.loads((path / "state.json").read_text())["files"]
    assert all(info["checksum"].startswith("sha256:") for info in files.values())


def test_background_saves_copy_into_the_buffers_of_the_last_one(make_engine, tmp_path, monkeypatch):
    from hookloop.plugins.checkpoint import Checkpoint

    taken = []
    real = ckpt.snapshot

    def spy(engine, **kwargs):
        taken.append((kwargs.get("reuse"), real(engine, **kwargs)))
        return taken[-1][1]

    monkeypatch.setattr(ckpt, "snapshot", spy)
    engine = make_engine(
        batches=20, run_dir=tmp_path, plugins=[Checkpoint(every=2, keep_last=0, background=True)]
    )
    engine.fit(max_steps=6)
    assert [reuse for reuse, _ in taken] == [None, taken[0][1], taken[1][1]]
    first, last = taken[0][1], taken[2][1]
    assert all(last.model[k] is first.model[k] for k in first.model)  # the same memory again
    assert all(last.optimizer[k] is first.optimizer[k] for k in first.optimizer)
    on_disk = load_file(tmp_path / "checkpoints" / ckpt.checkpoint_name(6) / "model.safetensors")
    assert all(torch.equal(on_disk[k], v) for k, v in engine.model.state_dict().items())

    engine.model.fc1 = torch.nn.Linear(4, 3)  # another shape: that tensor gets new memory
    again = real(engine, copy=True, reuse=last)
    assert again.model["fc1.weight"] is not last.model["fc1.weight"]
    assert again.model["fc2.weight"] is last.model["fc2.weight"]
    assert torch.equal(again.model["fc1.weight"], engine.model.fc1.weight)
