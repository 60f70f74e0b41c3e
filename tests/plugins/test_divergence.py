"""divergence on a real fit(): loss and gradient-norm spikes, warn and stop, saved averages."""

from __future__ import annotations

import pytest
import torch

from hookloop import PluginError, hookimpl
from hookloop.plugins.divergence import Divergence
from hookloop.plugins.guarding.policy import TrainingHalted


class LrJump:
    """Multiply the lr by `factor` from step `at` on: an absurd learning rate mid-run."""

    name = "lr_jump"

    def __init__(self, at: int, factor: float) -> None:
        self.at, self.factor = at, factor

    @hookimpl
    def before_step(self, engine, state):
        if state.step == self.at:
            for group in engine.optimizer.param_groups:
                group["lr"] *= self.factor


def events(engine, name):
    return [e for e in engine.journal.entries if e["event"] == name]


def test_warn_journals_a_loss_spike_and_goes_on(make_engine):
    engine = make_engine(
        batches=4, lr=0.05, plugins=[Divergence(warmup_steps=8), LrJump(at=12, factor=400.0)]
    )
    engine.fit(max_steps=16)
    spikes = events(engine, "divergence")
    assert spikes and spikes[0]["step"] >= 12 and spikes[0]["action"] == "warn"
    assert "x its average" in spikes[0]["reason"]
    assert engine.state.step == 16


def test_stop_on_an_absurd_learning_rate_before_the_loss_is_nan(make_engine):
    engine = make_engine(
        batches=4,
        lr=0.05,
        plugins=[Divergence(action="stop", warmup_steps=8), LrJump(at=12, factor=400.0)],
    )
    with pytest.raises(TrainingHalted, match=r"divergence: step 1[2-5]: .*x its average"):
        engine.fit(max_steps=40)
    assert events(engine, "stop")[0]["plugin"] == "divergence"
    assert all(torch.isfinite(p).all() for p in engine.model.parameters())


def test_a_gradient_norm_spike_is_named(make_engine):
    class BlowUpGrads:
        """Multiply every gradient by 1000 at step 6, leaving the loss as it is."""

        name = "blow_up_grads"
        before = ("divergence",)  # divergence must see the corrupted gradients

        @hookimpl
        def after_backward(self, engine, state):
            if state.step == 6:
                for p in engine.model.parameters():
                    p.grad.mul_(1000.0)

    engine = make_engine(batches=4, plugins=[Divergence(warmup_steps=4), BlowUpGrads()])
    engine.fit(max_steps=8)
    spike = events(engine, "divergence")[0]  # warn applied it: the loss spikes next
    assert spike["step"] == 6 and spike["reason"].startswith("gradient norm")
    assert spike["grad_norm"] > 100 * spike["grad_avg"]


def test_averages_survive_a_checkpoint(make_engine):
    guard = Divergence(warmup_steps=2)
    engine = make_engine(batches=4, plugins=[guard])
    engine.fit(max_steps=4)
    saved = engine.plugin_states()["divergence"]
    assert saved["seen"] == 4 and saved["loss_avg"] > 0 and saved["grad_avg"] > 0
    fresh = Divergence(warmup_steps=2)
    other = make_engine(batches=4, plugins=[fresh])
    other.load_plugin_states({"divergence": saved})
    assert (fresh.loss_avg, fresh.grad_avg, fresh.seen) == (
        saved["loss_avg"],
        saved["grad_avg"],
        4,
    )


def test_bad_options_are_rejected():
    with pytest.raises(PluginError, match="action must be one of warn, rollback, stop"):
        Divergence(action="panic")
    with pytest.raises(PluginError, match="loss_factor must be a number > 1.0"):
        Divergence(loss_factor=0.5)
    with pytest.raises(PluginError, match="beta"):
        Divergence(beta=1.0)


def test_rollback_on_a_loss_spike_continues_from_the_checkpoint(make_engine, tmp_path):
    pytest.importorskip("hookloop.checkpoint")
    from hookloop.plugins.checkpoint import Checkpoint

    guard = Divergence(action="rollback", warmup_steps=4, lr_factor=0.5)
    engine = make_engine(
        batches=12,
        run_dir=tmp_path,
        plugins=[guard, Checkpoint(every=4, keep_last=0, monitor="")],
    )
    x, y = engine.train_data[9]
    engine.train_data[9] = (x, y * 1000.0)  # targets off by 1000x: a loss spike at step 9
    state = engine.fit(max_steps=12)
    (rolled,) = events(engine, "rollback")
    assert rolled["step"] == 8 and rolled["from_step"] == 10 and rolled["plugin"] == "divergence"
    assert events(engine, "divergence")[0]["step"] == 9
    assert state.step == 12 and guard.policy.rollbacks == 1
    assert engine.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    saved = engine.plugin_states()["divergence"]
    assert saved["rollbacks"] == 1 and saved["spikes"] == 1


def test_with_a_fused_optimizer_a_spike_is_skipped_on_the_device_and_stops_a_step_late(
    make_engine,
):
    engine = make_engine(
        batches=12, plugins=[Divergence(action="stop", warmup_steps=4, grad_factor=5.0)]
    )
    engine.optimizer = torch.optim.AdamW(engine.model.parameters(), lr=0.01, fused=True)
    x, y = engine.train_data[9]
    engine.train_data[9] = (x, y * 1000.0)  # a loss and gradient spike at step 9
    engine.fit(max_steps=9)
    before = [p.detach().clone() for p in engine.model.parameters()]
    with pytest.raises(TrainingHalted, match=r"divergence: step 9: "):
        engine.fit(max_steps=12)
    assert engine.state.step == 10  # learnt in the step after it, whose update is not applied
    assert all(torch.equal(a, b) for a, b in zip(before, engine.model.parameters(), strict=True))
    (spike,) = events(engine, "divergence")
    assert spike["step"] == 9 and spike["loss"] > 2 * spike["loss_avg"]


def test_warn_never_reads_the_host_before_an_update(make_engine, monkeypatch):
    from hookloop.plugins.stepvalues import measure

    reads = []
    monkeypatch.setattr(measure, "_to_host", lambda t: reads.append(1) or t.tolist())
    engine = make_engine(batches=4, plugins=[Divergence(warmup_steps=2)])
    engine.fit(max_steps=8)  # SGD: warn needs no skip, so it is judged a step late
    assert reads == [] and engine.plugin_states()["divergence"]["seen"] == 8
