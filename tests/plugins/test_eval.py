"""The eval plugin: when it evaluates, what it publishes, and who sees it."""

from __future__ import annotations

import pytest

from hookloop import PluginError, hookimpl
from hookloop.plugins.eval import Eval


class Watch:
    """Records evaluations (on_eval_end) and the val metrics loggers see in after_step."""

    name = "watch"
    after = ("eval",)

    def __init__(self) -> None:
        self.evals: list[int] = []
        self.in_step: dict[int, float] = {}

    @hookimpl
    def on_eval_end(self, state, metrics):
        self.evals.append(state.step)

    @hookimpl
    def after_step(self, state):
        if "val_loss" in state.metrics:
            self.in_step[state.step] = state.metrics["val_loss"]


def test_every_n_steps_epoch_ends_and_final_each_once(make_engine):
    watch = Watch()
    engine = make_engine(batches=4, plugins=[Eval(every=3), watch])
    engine.fit(max_steps=10)  # epochs end at 4 and 8
    assert watch.evals == [3, 4, 6, 8, 9, 10]
    assert sorted(watch.in_step) == [3, 6, 9]  # published in the same after_step


def test_options_turn_each_trigger_off(make_engine):
    watch = Watch()
    make_engine(batches=4, plugins=[Eval(every=0, epoch_end=False, final=False), watch]).fit(
        max_steps=6
    )
    assert watch.evals == []
    watch = Watch()
    make_engine(batches=4, plugins=[Eval(every=0, epoch_end=True, final=False), watch]).fit(
        max_steps=6
    )
    assert watch.evals == [4]


def test_metrics_match_engine_evaluate_and_max_batches_caps(make_engine):
    seen = {}

    class Grab:
        after = ("eval",)

        @hookimpl
        def after_step(self, state):
            seen.update(state.metrics)

    engine = make_engine(batches=2, plugins=[Eval(every=2, max_batches=1, final=False), Grab()])
    engine.fit(max_steps=2)
    assert seen["val_loss"] == pytest.approx(engine.evaluate(max_batches=1)["val_loss"])
    assert seen["val_loss"] != pytest.approx(engine.evaluate()["val_loss"])


def test_no_validation_data_turns_it_off(make_engine):
    watch = Watch()
    make_engine(batches=2, val_data=None, plugins=[Eval(every=1), watch]).fit(max_steps=2)
    assert watch.evals == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"every": -1}, "every"),
        ({"max_batches": 1.5}, "max_batches"),
        ({"epoch_end": "yes"}, "epoch_end"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(PluginError, match=f"eval: option {message}"):
        Eval(**options)
