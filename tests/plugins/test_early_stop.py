"""The early_stop plugin: patience, min_delta, mode, journal entry, counters across resume."""

from __future__ import annotations

import pytest

from hookloop import PluginError, hookimpl
from hookloop.plugins.early_stop import EarlyStop
from hookloop.plugins.eval import Eval


class Scripted:
    """Replaces the measured val_loss with scripted values, before early_stop reads it."""

    name = "scripted"
    before = ("early_stop",)

    def __init__(self, values) -> None:
        self.values = list(values)

    @hookimpl
    def on_eval_end(self, metrics):
        metrics["val_loss"] = self.values.pop(0)


def test_stops_after_patience_evaluations_without_improvement(make_engine):
    engine = make_engine(
        batches=20,
        plugins=[
            Eval(every=1),
            Scripted([3.0, 2.0, 1.95, 2.5, 1.99, 2.0, 1.0, 1.0]),
            EarlyStop(patience=3, min_delta=0.1),
        ],
    )
    state = engine.fit(max_steps=20)
    # best 2.0 at step 2; 1.95 is not better by more than 0.1; stop at the 3rd bad eval
    assert state.step == 5 and state.should_stop.startswith("early stop: val_loss")
    [entry] = [e for e in engine.journal.entries if e["event"] == "early_stop"]
    assert entry["step"] == 5 and entry["best"] == 2.0 and entry["best_step"] == 2


def test_max_mode_and_real_metrics(make_engine):
    engine = make_engine(
        batches=10,
        plugins=[Eval(every=1), Scripted([1, 2, 3, 3, 3]), EarlyStop(mode="max", patience=2)],
    )
    assert engine.fit(max_steps=10).step == 5


def test_counters_survive_a_checkpoint(make_engine):
    first = EarlyStop(patience=3)
    engine = make_engine(batches=10, plugins=[Eval(every=1), Scripted([2.0, 2.1, 2.2]), first])
    engine.fit(max_steps=3)
    saved = engine.plugin_states()["early_stop"]
    assert saved == {"best": 2.0, "best_step": 1, "bad_evals": 2}

    resumed = make_engine(
        batches=10, plugins=[Eval(every=1), Scripted([2.05]), EarlyStop(patience=3)]
    )
    resumed.state.load_counters(engine.state.counters())
    resumed.load_plugin_states({"early_stop": saved})
    assert resumed.fit(max_steps=10).step == 4  # third bad evaluation in a row


def test_unknown_monitor_is_a_clear_error(make_engine):
    engine = make_engine(batches=2, plugins=[Eval(every=1), EarlyStop(monitor="accuracy")])
    with pytest.raises(
        PluginError,
        match="monitor 'accuracy' is not an evaluation metric; available: val_loss, val_ppl",
    ):
        engine.fit(max_steps=2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "lower"}, "mode"),
        ({"patience": 0}, "patience"),
        ({"min_delta": -0.1}, "min_delta"),
        ({"monitor": ""}, "monitor"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(PluginError, match=f"early_stop: option {message}"):
        EarlyStop(**options)
