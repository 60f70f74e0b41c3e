"""The schedule plugin: every step against the closed form, endpoints, resume."""

from __future__ import annotations

import math

import pytest

from hookloop import PluginError, hookimpl
from hookloop.plugins.schedule import LRSchedule, lr_at

PEAK = 0.1


class RecordLR:
    """Records the lr each optimizer step actually ran with (read in after_backward)."""

    name = "record_lr"

    def __init__(self) -> None:
        self.lrs: list[float] = []

    @hookimpl
    def after_backward(self, engine):
        self.lrs.append(engine.optimizer.param_groups[0]["lr"])


def seed_cosine(step, warmup, total, peak, min_lr):
    """The seed's formula, written out independently (step counted from 1, clamped past total)."""
    if step <= warmup:
        return step / warmup * peak
    progress = min((step - warmup) / (total - warmup), 1.0)
    return min_lr + (peak - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def run(make_engine, steps, **options):
    recorder = RecordLR()
    engine = make_engine(batches=steps, lr=PEAK, plugins=[LRSchedule(**options), recorder])
    engine.fit(max_steps=steps)
    return engine, recorder.lrs


def test_cosine_every_step_matches_the_seed_formula(make_engine):
    engine, lrs = run(make_engine, 20, warmup_steps=5, min_lr=0.01)
    expected = [seed_cosine(k, 5, 20, PEAK, 0.01) for k in range(1, 21)]
    assert lrs == pytest.approx(expected, abs=1e-15)
    assert lrs[4] == pytest.approx(PEAK)  # warmup ends at the peak
    assert lrs[0] == pytest.approx(PEAK / 5)  # the first update already learns
    assert lrs[-1] == pytest.approx(0.01)  # the last update uses min_lr
    assert engine.optimizer.param_groups[0]["initial_lr"] == PEAK


def test_lr_metric_is_written_each_step(make_engine):
    seen = []

    class Peek:
        @hookimpl
        def after_step(self, state):
            seen.append(state.metrics["lr"])

    engine = make_engine(batches=4, plugins=[LRSchedule(warmup_steps=2), Peek()])
    engine.fit(max_steps=4)
    assert seen == [lr_at(k, peak_lr=0.1, warmup_steps=2, total_steps=4) for k in range(1, 5)]


@pytest.mark.parametrize("kind", ["constant", "linear", "wsd"])
def test_other_kinds_every_step(make_engine, kind):
    _, lrs = run(make_engine, 20, kind=kind, warmup_steps=4, min_lr=0.02, decay_fraction=0.25)
    warm = [k / 4 * PEAK for k in range(1, 5)]
    assert lrs[:4] == pytest.approx(warm)
    rest = lrs[4:]
    if kind == "constant":
        assert rest == pytest.approx([PEAK] * 16)
    elif kind == "linear":
        assert rest == pytest.approx([PEAK + (0.02 - PEAK) * (k - 4) / 16 for k in range(5, 21)])
    else:  # stable until step 15, then linear decay over the last 5 steps
        assert rest[:11] == pytest.approx([PEAK] * 11)
        assert rest[11:] == pytest.approx(
            [PEAK + (0.02 - PEAK) * (k - 15) / 5 for k in range(16, 21)]
        )
    if kind != "constant":
        assert lrs[-1] == pytest.approx(0.02)


def test_past_the_end_stays_at_min_lr_and_no_warmup_starts_at_peak():
    for kind in ("cosine", "linear", "wsd"):
        assert lr_at(25, peak_lr=1.0, kind=kind, warmup_steps=5, total_steps=20, min_lr=0.1) == 0.1
        assert lr_at(1000, peak_lr=1.0, kind=kind, total_steps=20, min_lr=0.1) == 0.1
    assert lr_at(1, peak_lr=1.0, warmup_steps=0, total_steps=10) == pytest.approx(
        0.5 * (1 + math.cos(math.pi / 10))
    )
    assert lr_at(0, peak_lr=1.0, warmup_steps=3, total_steps=10) == 0.0
    assert lr_at(7, peak_lr=1.0, kind="constant", warmup_steps=3, total_steps=5) == 1.0


def test_fit_longer_than_total_steps_keeps_min_lr(make_engine):
    _, lrs = run(make_engine, 12, warmup_steps=2, total_steps=8, min_lr=0.005)
    assert lrs[7:] == pytest.approx([0.005] * 5)


def test_resumed_run_continues_the_same_curve(make_engine):
    _, full = run(make_engine, 16, warmup_steps=3, min_lr=0.001)

    class StopAt7:  # the first run is cut short, as a crash or preemption would
        @hookimpl
        def after_step(self, state):
            if state.step == 7:
                state.request_stop("interrupted")

    first = RecordLR()
    a = make_engine(
        batches=16, lr=PEAK, plugins=[LRSchedule(warmup_steps=3, min_lr=0.001), first, StopAt7()]
    )
    a.fit(max_steps=16)
    assert len(first.lrs) == 7
    # A fresh process: a new engine whose optimizer state (with initial_lr) and counters
    # come from the first one, as a checkpoint load would restore them.
    second = RecordLR()
    b = make_engine(batches=16, lr=PEAK, plugins=[LRSchedule(warmup_steps=3, min_lr=0.001), second])
    b.optimizer.load_state_dict(a.optimizer.state_dict())
    b.state.load_counters(a.state.counters())
    b.fit(max_steps=16)
    assert first.lrs + second.lrs == full


def test_epochs_only_run_derives_total_steps(make_engine):
    recorder = RecordLR()
    engine = make_engine(batches=5, plugins=[LRSchedule(warmup_steps=2), recorder])
    engine.fit(epochs=2)
    assert len(recorder.lrs) == 10 and recorder.lrs[-1] == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "step"}, "kind must be one of"),
        ({"warmup_steps": -1}, "warmup_steps must be an integer"),
        ({"min_lr": "0"}, "min_lr must be a number"),
        ({"decay_fraction": 0}, "decay_fraction must be in"),
        ({"warmup_steps": 10, "total_steps": 10}, "warmup_steps .10. must be less"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(PluginError, match=f"schedule: .*{message}"):
        LRSchedule(**options)


def test_warmup_longer_than_run_and_min_lr_above_peak_are_errors(make_engine):
    with pytest.raises(PluginError, match="warmup_steps .5. must be less than the run's 4 steps"):
        make_engine(plugins=[LRSchedule(warmup_steps=5)]).fit(max_steps=4)
    with pytest.raises(PluginError, match="min_lr .0.5. is above the peak lr"):
        make_engine(lr=0.1, plugins=[LRSchedule(warmup_steps=1, min_lr=0.5)]).fit(max_steps=4)


# --- the plugin's own `hookloop doctor` check --------------------------------------------


def doctor_schedule(make_engine, plugin, **options):
    """The `schedule` finding `hookloop doctor` reports for a run with this plugin."""
    from hookloop.lm.doctor import diagnose

    engine = make_engine(lr=0.01, plugins=[plugin])
    findings = diagnose(engine, engine.train_data[:1], overfit_steps=1, **options)
    (finding,) = [f for f in findings if f.check == "schedule"]
    return engine, finding


def test_doctor_check_reads_the_configured_curve_and_leaves_the_optimizer_alone(make_engine):
    engine, found = doctor_schedule(
        make_engine, LRSchedule(warmup_steps=5, min_lr=1e-4), max_steps=50
    )
    assert found.status == "PASS", found
    assert found.detail.startswith("cosine: step 1: 0.002, step 5: 0.01, step 27: ")
    assert found.detail.endswith("step 50: 0.0001 (peak 0.01, warmup 5)")
    assert engine.optimizer.param_groups[0]["lr"] == 0.01
    assert "initial_lr" not in engine.optimizer.param_groups[0]


def test_doctor_check_uses_total_steps_and_warns_when_the_length_is_unknown(make_engine):
    _, found = doctor_schedule(make_engine, LRSchedule(kind="linear", total_steps=20))
    assert found.status == "PASS" and "step 20: 0 " in found.detail
    _, found = doctor_schedule(make_engine, LRSchedule())
    assert found.status == "WARN" and "run length is unknown" in found.detail


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (lambda step, **o: o["peak_lr"], "does not warm up to the peak over 5 steps"),
        (lambda step, **o: lr_at(step, **{**o, "min_lr": 0.0}), "does not decay to min_lr 0.001"),
        (lambda step, **o: 0.0, "the lr is not finite, or never positive"),
        (lambda step, **o: math.nan, "the lr is not finite, or never positive"),
    ],
)
def test_doctor_check_fails_a_broken_lr_function(make_engine, monkeypatch, broken, message):
    import hookloop.plugins.schedule as schedule

    monkeypatch.setattr(schedule, "lr_at", broken)
    _, found = doctor_schedule(make_engine, LRSchedule(warmup_steps=5, min_lr=1e-3), max_steps=40)
    assert found.status == "FAIL" and found.detail.endswith(message), found


def test_check_curve_of_a_constant_schedule_needs_no_decay():
    from hookloop.plugins.schedule import check_curve

    found = check_curve(
        lambda step: 0.1, kind="constant", peak_lr=0.1, warmup_steps=0, total_steps=9, min_lr=0.0
    )
    assert found.status == "PASS" and found.detail.startswith("constant: step 1: 0.1, step 4: 0.1")
