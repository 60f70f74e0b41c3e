"""The clip plugin: pre-clip norm, clipping by norm and by value, fp16 unscaling."""

from __future__ import annotations

import pytest
import torch

from hookloop import PluginError, hookimpl
from hookloop.plugins.clip import GradClip


class GradProbe:
    """Reads the gradients before and after clip (ordered around it) in after_backward."""

    def __init__(self, name: str, **order) -> None:
        self.name, self.norms, self.maxabs = name, [], []
        for key, value in order.items():
            setattr(self, key, value)

    @hookimpl
    def after_backward(self, engine):
        grads = [p.grad for p in engine.model.parameters() if p.grad is not None]
        self.norms.append(float(torch.nn.utils.get_total_norm(grads)))
        self.maxabs.append(max(float(g.abs().max()) for g in grads))


class Metrics:
    name = "metrics_probe"
    after = ("clip",)

    def __init__(self) -> None:
        self.rows = []

    @hookimpl
    def after_step(self, state):
        self.rows.append(dict(state.metrics))


def fit_with(make_engine, clip, steps=5, **kwargs):
    before = GradProbe("before", before=("clip",))
    after = GradProbe("after", after=("clip",))
    metrics = Metrics()
    engine = make_engine(batches=steps, plugins=[before, clip, after, metrics], **kwargs)
    engine.fit(max_steps=steps)
    return before, after, metrics.rows


def test_norm_mode_records_pre_clip_norm_as_tensors_and_clips(make_engine):
    before, after, rows = fit_with(make_engine, GradClip(max_norm=0.05))
    for pre, post, row in zip(before.norms, after.norms, rows, strict=True):
        assert isinstance(row["grad_norm"], torch.Tensor) and isinstance(
            row["clipped"], torch.Tensor
        )
        assert float(row["grad_norm"]) == pytest.approx(pre, rel=1e-5)
        assert bool(row["clipped"]) == (pre > 0.05)
        assert post == pytest.approx(min(pre, 0.05), rel=1e-4)
    assert any(bool(r["clipped"]) for r in rows)


def test_large_max_norm_leaves_gradients_alone(make_engine):
    before, after, rows = fit_with(make_engine, GradClip(max_norm=1e6))
    assert after.norms == pytest.approx(before.norms)
    assert not any(bool(r["clipped"]) for r in rows)


def test_value_mode_clamps_each_element(make_engine):
    before, after, rows = fit_with(make_engine, GradClip(mode="value", max_value=0.01))
    assert all(m <= 0.01 + 1e-9 for m in after.maxabs)
    for pre_max, pre_norm, row in zip(before.maxabs, before.norms, rows, strict=True):
        assert float(row["grad_norm"]) == pytest.approx(pre_norm, rel=1e-5)
        assert bool(row["clipped"]) == (pre_max > 0.01)


def test_fp16_gradients_are_unscaled_before_clipping(make_engine):
    # GradScaler works on CPU: the scale starts at 65536, so a norm read before unscaling
    # would be four orders of magnitude too large.
    _, _, fp32_rows = fit_with(make_engine, GradClip(max_norm=1e6), steps=1)
    before, after, rows = fit_with(make_engine, GradClip(max_norm=1e6), steps=1, precision="fp16")
    assert before.norms[0] > 1000 * float(rows[0]["grad_norm"])  # scaled before clip ran
    assert float(rows[0]["grad_norm"]) == pytest.approx(float(fp32_rows[0]["grad_norm"]), rel=2e-2)
    assert after.norms[0] == pytest.approx(float(rows[0]["grad_norm"]), rel=1e-3)


def test_fp16_run_with_clipping_trains(make_engine):
    engine = make_engine(batches=4, precision="fp16", plugins=[GradClip(max_norm=0.1)])
    first = engine.model.fc1.weight.detach().clone()
    engine.fit(max_steps=4)
    assert not torch.equal(first, engine.model.fc1.weight)
    assert engine.scaler is not None and engine.scaler.get_scale() > 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "l2"}, "mode must be"),
        ({"max_norm": 0}, "max_norm must be a number > 0"),
        ({"max_value": "1"}, "max_value must be"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(PluginError, match=f"clip: option {message}"):
        GradClip(**options)


def test_a_norm_measured_earlier_in_the_step_is_reused(make_engine):
    """nan_guard runs first and measures the gradients; clip must not measure them again."""
    seen = {}

    class Measured:
        name = "measured"
        before = ("clip",)

        @hookimpl
        def after_backward(self, engine, state):
            seen["before"] = [p.grad.clone() for p in engine.model.parameters()]
            state.metrics["grad_norm"] = 1000.0  # as if measured: clip scales by 1/1000

    class After:
        name = "after"
        after = ("clip",)

        @hookimpl
        def after_backward(self, engine):
            seen["after"] = [p.grad.clone() for p in engine.model.parameters()]

    engine = make_engine(plugins=[After(), GradClip(max_norm=1.0), Measured()])
    engine.fit(max_steps=1)
    for before, after in zip(seen["before"], seen["after"], strict=True):
        torch.testing.assert_close(after, before / 1000.0, rtol=1e-4, atol=0)


def test_clipping_with_nan_guard_first_matches_clipping_alone(make_engine):
    from hookloop.plugins.nan_guard import NanGuard

    alone = make_engine(plugins=[GradClip(max_norm=0.05)], lr=0.5)
    alone.fit(max_steps=4)
    guarded = make_engine(plugins=[GradClip(max_norm=0.05), NanGuard()], lr=0.5)
    guarded.fit(max_steps=4)
    for a, b in zip(alone.model.parameters(), guarded.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_clipping_reads_nothing_on_the_host(make_engine, monkeypatch):
    reads = []
    for method in ("item", "tolist", "__bool__", "__float__"):
        real = getattr(torch.Tensor, method)
        monkeypatch.setattr(
            torch.Tensor,
            method,
            lambda t, *a, _real=real, **k: reads.append(1) or _real(t, *a, **k),
        )
    engine = make_engine(plugins=[GradClip(max_norm=0.01)])
    engine.fit(max_steps=3)
    monkeypatch.undo()
    assert reads == []
    assert bool(engine.state.metrics["clipped"])
