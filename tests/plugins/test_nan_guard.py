"""nan_guard on a real fit(): NaN in the data, an absurd lr, skip, stop, one sync per step."""

from __future__ import annotations

import copy

import pytest
import torch

from hookloop import PluginError, hookimpl
from hookloop.plugins.guarding.policy import TrainingHalted
from hookloop.plugins.nan_guard import NanGuard


def poison(engine, index: int) -> None:
    """Put a NaN into the inputs of training batch `index`."""
    x, y = engine.train_data[index]
    x = x.clone()
    x[0, 0] = float("nan")
    engine.train_data[index] = (x, y)


def events(engine, name):
    return [e for e in engine.journal.entries if e["event"] == name]


def test_nan_in_the_data_stops_naming_the_parameters(make_engine):
    engine = make_engine(batches=6, plugins=[NanGuard()])
    poison(engine, 2)
    with pytest.raises(TrainingHalted, match=r"nan_guard: step 2: loss is nan.*fc1.weight"):
        engine.fit(max_steps=6)
    (found,) = events(engine, "nan_detected")
    assert found["step"] == 2 and "fc1.weight" in found["parameters"]
    assert "fc2.bias" in found["parameters"]
    assert events(engine, "stop")[0]["plugin"] == "nan_guard"
    assert all(torch.isfinite(p).all() for p in engine.model.parameters())  # never applied


def test_an_absurd_learning_rate_is_caught_when_the_loss_explodes(make_engine):
    engine = make_engine(batches=8, lr=1e6, plugins=[NanGuard()])
    with pytest.raises(TrainingHalted, match="nan_guard"):
        engine.fit(epochs=20)
    assert events(engine, "nan_detected")
    assert all(torch.isfinite(p).all() for p in engine.model.parameters())


def test_skip_leaves_weights_and_optimizer_state_bit_identical(make_engine):
    engine = make_engine(batches=6, plugins=[NanGuard(action="skip")])
    engine.optimizer = torch.optim.SGD(engine.model.parameters(), lr=0.1, momentum=0.9)
    poison(engine, 3)
    engine.fit(max_steps=3)
    weights = copy.deepcopy(engine.model.state_dict())
    optim = copy.deepcopy(engine.optimizer.state_dict())
    engine.fit(max_steps=4)  # step index 3 reads the poisoned batch
    assert engine.state.step == 4
    for name, value in engine.model.state_dict().items():
        assert torch.equal(value, weights[name]), name
    after = engine.optimizer.state_dict()
    for key, saved in optim["state"].items():
        assert torch.equal(after["state"][key]["momentum_buffer"], saved["momentum_buffer"])
    (skipped,) = events(engine, "step_skipped")
    assert skipped["step"] == 3 and skipped["plugin"] == "nan_guard"
    engine.fit(max_steps=6)  # healthy steps go on
    assert not torch.equal(engine.model.fc1.weight, weights["fc1.weight"])
    assert engine.plugins["nan_guard"].plugin.policy.counters() == {
        "skipped": 1,
        "consecutive": 0,
        "rollbacks": 0,
    }


def test_skip_stops_after_max_consecutive_bad_steps(make_engine):
    engine = make_engine(batches=6, plugins=[NanGuard(action="skip", max_skips=2)])
    for i in (1, 2, 3):
        poison(engine, i)
    with pytest.raises(TrainingHalted, match="3 bad steps in a row"):
        engine.fit(max_steps=6)
    assert [e["step"] for e in events(engine, "step_skipped")] == [1, 2]


def test_with_a_non_fused_optimizer_the_guards_cost_one_host_read_per_step(
    make_engine, monkeypatch
):
    from hookloop.plugins.divergence import Divergence
    from hookloop.plugins.stepvalues import measure

    reads = []
    real = measure._to_host
    monkeypatch.setattr(measure, "_to_host", lambda t: reads.append(1) or real(t))
    engine = make_engine(batches=6, plugins=[NanGuard(), Divergence(warmup_steps=1)])
    engine.fit(max_steps=6)  # SGD cannot skip an update on the device: read before it
    assert len(reads) == 6
    assert isinstance(engine.state.metrics["grad_norm"], torch.Tensor)


def test_bad_options_are_rejected():
    with pytest.raises(PluginError, match="action must be one of stop, skip, rollback"):
        NanGuard(action="ignore")
    with pytest.raises(PluginError, match="max_skips"):
        NanGuard(max_skips=0)
    with pytest.raises(PluginError, match="lr_factor"):
        NanGuard(lr_factor=2.0)


# --- with checkpoints: emergency save and rollback --------------------------------------


def checkpointing():
    return pytest.importorskip("hookloop.checkpoint")


def test_stop_saves_an_emergency_checkpoint_of_the_weights_before_the_bad_step(
    make_engine, tmp_path
):
    ckpt = checkpointing()
    engine = make_engine(batches=6, plugins=[NanGuard()], run_dir=tmp_path)
    poison(engine, 2)
    engine.fit(max_steps=2)
    good = copy.deepcopy(engine.model.state_dict())
    with pytest.raises(TrainingHalted, match="saved in .*emergency-step-00000002"):
        engine.fit(max_steps=6)
    path = tmp_path / "checkpoints" / "emergency-step-00000002"
    assert ckpt.verify_checkpoint(path)["extra"]["emergency"].startswith("loss is nan")
    _, files = ckpt.read_checkpoint(path)
    for name, value in files["model.safetensors"].items():
        assert torch.equal(value, good[name]), name
    assert [e["event"] for e in engine.journal.read()][-3:] == [
        "nan_detected",
        "checkpoint_saved",
        "stop",
    ]
    assert ckpt.latest_valid_checkpoint(tmp_path) == path
    # Resuming from it goes on with the batch after the bad one.
    resumed = make_engine(batches=6, plugins=[NanGuard()])
    resumed.train_data[:] = engine.train_data
    ckpt.load_checkpoint(resumed, path)
    state = resumed.fit(max_steps=5)  # steps 2, 3, 4 read batches 3, 4, 5: no NaN again
    assert (state.step, state.epoch, state.micro_step) == (5, 1, 6)


def test_rollback_reloads_the_last_checkpoint_lowers_the_lr_and_continues(make_engine, tmp_path):
    checkpointing()
    from hookloop.plugins.checkpoint import Checkpoint

    restored = {}

    class Probe:
        """Record the weights right after the rollback (runs after nan_guard's after_step)."""

        name = "probe"
        after = ("nan_guard",)

        @hookimpl
        def after_step(self, engine, state):
            if engine.plugins["nan_guard"].plugin.policy.rollbacks == 1 and not restored:
                restored.update(copy.deepcopy(engine.model.state_dict()), step=state.step)

    guard = NanGuard(action="rollback", lr_factor=0.5)
    engine = make_engine(
        batches=8,
        run_dir=tmp_path,
        plugins=[
            guard,
            Checkpoint(every=2, keep_last=0, monitor="", save_on_end=False),
            Probe(),
        ],
    )
    poison(engine, 5)
    engine.fit(max_steps=4)
    at_four = copy.deepcopy(engine.model.state_dict())  # what step-00000004 holds
    state = engine.fit(max_steps=10)
    (rolled,) = events(engine, "rollback")
    assert rolled["from_step"] == 6 and rolled["step"] == 4 and rolled["plugin"] == "nan_guard"
    assert rolled["checkpoint"].endswith("step-00000004")
    assert restored["step"] == 4
    assert all(torch.equal(restored[k], at_four[k]) for k in at_four)
    assert state.step == 10 and guard.policy.rollbacks == 1
    assert engine.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    assert all(torch.isfinite(p).all() for p in engine.model.parameters())


def test_rollback_without_a_checkpoint_stops_with_the_reason(make_engine, tmp_path):
    checkpointing()
    engine = make_engine(batches=6, run_dir=tmp_path, plugins=[NanGuard(action="rollback")])
    poison(engine, 1)
    with pytest.raises(TrainingHalted, match="cannot roll back: no valid checkpoint"):
        engine.fit(max_steps=6)


def test_rollback_gives_up_after_max_rollbacks(make_engine, tmp_path):
    checkpointing()
    from hookloop.plugins.checkpoint import Checkpoint

    guard = NanGuard(action="rollback", max_rollbacks=2)
    engine = make_engine(
        batches=8,
        run_dir=tmp_path,
        plugins=[guard, Checkpoint(every=1, keep_last=0, monitor="")],
    )
    for i in (3, 4, 5):
        poison(engine, i)
    with pytest.raises(TrainingHalted, match="already rolled back 2 times"):
        engine.fit(max_steps=8)
    assert len(events(engine, "rollback")) == 2


def test_under_fp16_overflowing_gradients_are_left_to_the_grad_scaler(make_engine):
    class Overflow:
        name = "overflow"
        before = ("nan_guard",)  # the guard must see the overflowed gradients

        @hookimpl
        def after_backward(self, engine, state):
            if state.step == 2:
                for p in engine.model.parameters():
                    p.grad.fill_(float("inf"))

    engine = make_engine(batches=5, precision="fp16", plugins=[NanGuard(), Overflow()])
    scale = engine.scaler.get_scale()
    assert engine.fit(max_steps=5).step == 5
    assert engine.scaler.get_scale() == scale / 2  # the scaler skipped that step itself
    assert not events(engine, "nan_detected")
    assert all(torch.isfinite(p).all() for p in engine.model.parameters())


def test_the_checkpoint_plugin_leaves_the_guards_emergency_checkpoint_as_latest(
    make_engine, tmp_path
):
    ckpt = checkpointing()
    from hookloop.plugins.checkpoint import Checkpoint

    engine = make_engine(batches=6, plugins=[NanGuard(), Checkpoint()], run_dir=tmp_path)
    poison(engine, 2)
    with pytest.raises(TrainingHalted):
        engine.fit(max_steps=6)
    path = tmp_path / "checkpoints" / "emergency-step-00000002"
    assert ckpt.latest_valid_checkpoint(tmp_path) == path  # not a re-save that replays the NaN


def test_the_emergency_checkpoint_uses_the_checkpoint_plugins_checksum(make_engine, tmp_path):
    ckpt = checkpointing()
    from hookloop.plugins.checkpoint import Checkpoint

    plugins = [NanGuard(), Checkpoint(checksum="sha256")]
    engine = make_engine(batches=6, plugins=plugins, run_dir=tmp_path)
    poison(engine, 2)
    with pytest.raises(TrainingHalted):
        engine.fit(max_steps=6)
    path = tmp_path / "checkpoints" / "emergency-step-00000002"
    files = ckpt.verify_checkpoint(path)["files"]
    assert files and all(f["checksum"].startswith("sha256:") for f in files.values()), files


# --- a fused optimizer: skipped on the device, judged one step late ----------------------


def fused(engine, lr: float = 0.01):
    """Give the engine a fused AdamW, which can skip an update on the device."""
    engine.optimizer = torch.optim.AdamW(engine.model.parameters(), lr=lr, fused=True)
    return engine


class Seen:
    """Record, after every step, how many `nan_detected` entries the journal holds."""

    name = "seen"

    def __init__(self):
        self.counts = []

    @hookimpl
    def after_step(self, engine, state):
        self.counts.append((state.step, len(events(engine, "nan_detected"))))


def test_a_fused_optimizer_skips_the_bad_update_on_the_device_with_no_host_read(
    make_engine, monkeypatch
):
    from hookloop.plugins.stepvalues import measure

    reads = []
    monkeypatch.setattr(measure, "_to_host", lambda t: reads.append(1) or t.tolist())
    seen = Seen()
    engine = fused(make_engine(batches=6, plugins=[NanGuard(action="skip"), seen]))
    poison(engine, 2)
    engine.fit(max_steps=2)
    weights = copy.deepcopy(engine.model.state_dict())
    moments = copy.deepcopy(engine.optimizer.state_dict()["state"])
    engine.fit(max_steps=3)  # step 2 reads the poisoned batch: the device leaves it out
    for name, value in engine.model.state_dict().items():
        assert torch.equal(value, weights[name]), name
    for key, saved in moments.items():  # moments and step count untouched too
        for name, value in engine.optimizer.state_dict()["state"][key].items():
            assert torch.equal(value, saved[name]), name
    engine.fit(max_steps=6)
    assert reads == []  # nothing read before an update
    (skipped,) = events(engine, "step_skipped")
    assert skipped["step"] == 2 and events(engine, "nan_detected")[0]["parameters"]
    # The step-2 verdict reached the host at the end of that fit() (it was its last step).
    assert seen.counts[2] == (3, 0) and seen.counts[3] == (4, 1)
    assert all(torch.isfinite(p).all() for p in engine.model.parameters())
    assert engine.optimizer.state_dict()["state"][0]["step"].item() == 5  # 6 steps, 1 skipped


def test_a_fused_optimizer_learns_of_the_bad_step_one_step_late_and_stops(make_engine, tmp_path):
    ckpt = checkpointing()
    seen = Seen()
    engine = fused(make_engine(batches=6, plugins=[NanGuard(), seen], run_dir=tmp_path))
    poison(engine, 2)
    engine.fit(max_steps=2)
    good = copy.deepcopy(engine.model.state_dict())
    with pytest.raises(TrainingHalted, match=r"nan_guard: step 2: loss is nan.*fc1.weight"):
        engine.fit(max_steps=6)
    assert seen.counts[-1] == (3, 0)  # halted in the after_backward of the step after it
    # The emergency checkpoint is taken then, named after that step, with the weights
    # before the bad step: neither the bad update nor the next one was applied.
    path = tmp_path / "checkpoints" / "emergency-step-00000003"
    _, files = ckpt.read_checkpoint(path)
    for name, value in files["model.safetensors"].items():
        assert torch.equal(value, good[name]), name
    assert events(engine, "stop")[0]["step"] == 2


def test_fp16_falls_back_to_a_host_read_even_with_a_fused_optimizer(make_engine, monkeypatch):
    from hookloop.plugins.stepvalues import measure

    reads = []
    monkeypatch.setattr(measure, "_to_host", lambda t: reads.append(1) or t.tolist())
    engine = fused(make_engine(batches=3, precision="fp16", plugins=[NanGuard()]))
    engine.fit(max_steps=3)
    assert len(reads) == 3  # the GradScaler owns found_inf under fp16
