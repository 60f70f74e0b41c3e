"""The `checkpoint` plugin: cadence, keep-last-K, best, end and emergency saves, background."""

from __future__ import annotations

import json

import pytest
import torch

from hookloop import checkpoint as ckpt
from hookloop import hookimpl
from hookloop.errors import PluginError
from hookloop.plugins.checkpoint import Checkpoint


def names(run_dir):
    return [p.name for p in ckpt.list_checkpoints(run_dir / "checkpoints")]


def events(engine, event):
    return [e for e in engine.journal.read() if e["event"] == event]


class ScriptedEval:
    """Fires on_eval_end with a scripted val_loss at chosen steps (before the save)."""

    def __init__(self, values):
        self.values = values

    @hookimpl
    def after_step(self, engine, state):
        if state.step in self.values:
            engine.hooks.call(
                "on_eval_end",
                engine=engine,
                state=state,
                metrics={"val_loss": self.values[state.step]},
            )


def test_every_n_steps_keeps_the_last_k_and_journals(make_engine, tmp_path):
    engine = make_engine(batches=20, run_dir=tmp_path, plugins=[Checkpoint(every=2, keep_last=2)])
    engine.fit(max_steps=9)
    assert names(tmp_path) == ["step-00000008", "step-00000009"]  # 9: the save at the end
    assert [e["step"] for e in events(engine, "checkpoint_saved")] == [2, 4, 6, 8, 9]
    assert [e["path"][-13:] for e in events(engine, "checkpoint_pruned")] == [
        "step-00000002",
        "step-00000004",
        "step-00000006",
    ]
    assert ckpt.read_pointer(tmp_path / "checkpoints", ckpt.LATEST).name == "step-00000009"


def test_best_by_watched_metric_is_never_pruned(make_engine, tmp_path):
    evals = ScriptedEval({2: 1.0, 4: 0.5, 6: 0.8, 8: 0.9})
    plugin = Checkpoint(every=0, keep_last=1, save_on_end=False)
    engine = make_engine(batches=20, run_dir=tmp_path, plugins=[evals, plugin])
    engine.fit(max_steps=9)
    assert names(tmp_path) == ["step-00000004"]
    assert ckpt.read_pointer(tmp_path / "checkpoints", ckpt.BEST).name == "step-00000004"
    assert plugin.on_save_checkpoint()["best_value"] == 0.5
    maximize = Checkpoint(every=0, keep_last=1, save_on_end=False, mode="max")
    other = make_engine(batches=20, run_dir=tmp_path / "max", plugins=[evals, maximize])
    other.fit(max_steps=9)
    assert ckpt.read_pointer(tmp_path / "max" / "checkpoints", ckpt.BEST).name == "step-00000002"


class EvalAtFitEnd:
    """A final evaluation in on_fit_end, after the last periodic save (as the eval plugin's)."""

    @hookimpl(tryfirst=True)
    def on_fit_end(self, engine):
        engine.hooks.call(
            "on_eval_end", engine=engine, state=engine.state, metrics={"val_loss": 0.1}
        )


def test_a_saved_state_that_becomes_best_is_named_best_not_written_again(make_engine, tmp_path):
    plugin = Checkpoint(every=4, keep_last=0)
    engine = make_engine(batches=20, run_dir=tmp_path, plugins=[EvalAtFitEnd(), plugin])
    engine.fit(max_steps=4)
    assert [(e["step"], e["reason"]) for e in events(engine, "checkpoint_saved")] == [
        (4, "periodic")
    ]  # the end save found that state on disk: one write, not two
    (marked,) = events(engine, "checkpoint_best")
    assert marked["path"].endswith("step-00000004")
    assert ckpt.read_pointer(tmp_path / "checkpoints", ckpt.BEST).name == "step-00000004"
    saved = ckpt.verify_checkpoint(tmp_path / "checkpoints" / "step-00000004")
    assert saved["plugins"]["checkpoint"]["best"] == "step-00000004"
    assert saved["plugins"]["checkpoint"]["best_value"] == 0.1


def test_a_resumed_run_does_not_prune_what_an_earlier_launch_pruned(make_engine, tmp_path):
    first = make_engine(batches=20, run_dir=tmp_path, plugins=[Checkpoint(every=2, keep_last=1)])
    first.fit(max_steps=4)  # step 2 was pruned after step 4's state (which lists it) was saved
    second = make_engine(batches=20, run_dir=tmp_path, plugins=[Checkpoint(every=2, keep_last=1)])
    ckpt.load_checkpoint(second, tmp_path / "checkpoints" / "step-00000004")
    second.fit(max_steps=6)
    pruned = [e["path"][-13:] for e in events(second, "checkpoint_pruned")]
    assert pruned.count("step-00000002") == 1 and pruned[-1] == "step-00000004", pruned
    assert names(tmp_path) == ["step-00000006"]


def test_end_of_fit_save_and_its_options(make_engine, tmp_path):
    make_engine(run_dir=tmp_path / "a", plugins=[Checkpoint(every=0)]).fit(max_steps=3)
    assert names(tmp_path / "a") == ["step-00000003"]
    make_engine(run_dir=tmp_path / "b", plugins=[Checkpoint(save_on_end=False)]).fit(max_steps=3)
    assert names(tmp_path / "b") == []
    make_engine(plugins=[Checkpoint(every=1)]).fit(max_steps=2)  # no run_dir: no files
    engine = make_engine(run_dir=tmp_path / "c", plugins=[Checkpoint(every=1)])
    engine.is_main_process = False  # only rank 0 writes
    engine.fit(max_steps=2)
    assert not (tmp_path / "c" / "checkpoints").exists()


def test_every_minutes(make_engine, tmp_path):
    engine = make_engine(
        run_dir=tmp_path,
        plugins=[Checkpoint(every=0, every_minutes=1e-9, keep_last=0, save_on_end=False)],
    )
    engine.fit(max_steps=3)
    assert names(tmp_path) == ["step-00000001", "step-00000002", "step-00000003"]


def test_exception_saves_the_last_consistent_state_when_finite(make_engine, tmp_path):
    calls = {"n": 0}

    def flaky_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == 6:  # second micro-batch of step 3 (accumulate=2)
            raise RuntimeError("boom")
        x, y = batch
        return torch.nn.functional.mse_loss(model(x), y)

    engine = make_engine(
        batches=20,
        run_dir=tmp_path,
        accumulate=2,
        loss_fn=flaky_loss,
        plugins=[Checkpoint(every=0)],
    )
    with pytest.raises(RuntimeError, match="boom"):
        engine.fit(max_steps=5)
    # Not exact (the generators moved on mid-step): kept under its own name, never step-N.
    assert names(tmp_path) == []
    path = tmp_path / "checkpoints" / "emergency-step-00000002"
    saved = ckpt.verify_checkpoint(path)
    assert saved["exact"] is False and saved["extra"]["reason"] == "exception: RuntimeError"
    assert saved["counters"]["micro_step"] == 4 and saved["counters"]["epoch_batch"] == 4
    assert ckpt.inexact_reason(saved) == "saved in the middle of a step after an error"
    # What --resume auto asks for passes it over, and says why.
    skipped = []
    assert ckpt.latest_valid_checkpoint(tmp_path) == path
    assert ckpt.latest_valid_checkpoint(tmp_path, exact=True, skipped=skipped) is None
    assert skipped == [(path, "saved in the middle of a step after an error")]


def test_exception_between_steps_saves_an_exact_step_checkpoint(make_engine, tmp_path):
    class Boom:
        @hookimpl
        def after_step(self, engine, state):
            if state.step == 3:
                raise KeyboardInterrupt  # not a plugin error: the loop lets it through

    engine = make_engine(batches=20, run_dir=tmp_path, plugins=[Boom(), Checkpoint(every=0)])
    with pytest.raises(KeyboardInterrupt):
        engine.fit(max_steps=5)
    saved = ckpt.verify_checkpoint(tmp_path / "checkpoints" / "step-00000003")
    assert saved["exact"] is True and ckpt.inexact_reason(saved) is None
    assert ckpt.latest_valid_checkpoint(tmp_path, exact=True) == saved_path(tmp_path, 3)


def saved_path(run_dir, step):
    return run_dir / "checkpoints" / f"step-{step:08d}"


def test_no_emergency_save_of_non_finite_parameters(make_engine, tmp_path):
    class Poison:
        @hookimpl
        def after_step(self, engine, state):
            with torch.no_grad():
                engine.model.fc1.weight.fill_(float("nan"))
            raise RuntimeError("diverged")

    engine = make_engine(run_dir=tmp_path, plugins=[Poison(), Checkpoint(every=0)])
    with pytest.raises(PluginError):
        engine.fit(max_steps=3)
    assert names(tmp_path) == []


def test_background_save_writes_the_same_bytes(make_engine, tmp_path):
    engines = {}
    for mode in ("sync", "background"):
        plugin = Checkpoint(every=2, keep_last=0, background=mode == "background")
        engines[mode] = make_engine(batches=20, run_dir=tmp_path / mode, plugins=[plugin])
        engines[mode].fit(max_steps=6)
    for step in (2, 4, 6):
        name = ckpt.checkpoint_name(step)
        sync, background = (tmp_path / m / "checkpoints" / name for m in ("sync", "background"))
        files = sorted(p.name for p in sync.iterdir())
        assert files == sorted(p.name for p in background.iterdir())
        assert files == ["model.safetensors", "optimizer.safetensors", "state.json"]
        for tensors in ("model.safetensors", "optimizer.safetensors"):
            assert (sync / tensors).read_bytes() == (background / tensors).read_bytes(), tensors
        a, b = (json.loads((d / "state.json").read_text()) for d in (sync, background))
        for state in (a, b):  # when and where it ran: the only fields that may differ
            del state["saved_at"]
            state["config"] = None
        assert a == b
    saved = events(engines["background"], "checkpoint_saved")
    assert [e["step"] for e in saved] == [2, 4, 6] and all("stall_ms" in e for e in saved[:2])


@pytest.mark.parametrize(
    "options", [{"every": -1}, {"mode": "best"}, {"keep_last": 1.5}, {"every_minutes": -2}]
)
def test_bad_options_are_refused(options):
    with pytest.raises(PluginError, match="checkpoint: option"):
        Checkpoint(**options)


def test_without_a_run_dir_it_says_once_that_it_saves_nothing(make_engine, capsys):
    from structlog.testing import capture_logs

    plugin = Checkpoint(every=1)
    engine = make_engine(plugins=[plugin])
    with capture_logs() as logs:
        engine.fit(max_steps=2)
        engine.fit(max_steps=4)
    assert [e["event"] for e in logs].count("checkpoint_off") == 1


def test_a_failure_before_the_first_step_saves_nothing(make_engine, tmp_path):
    class Refuses:
        name = "refuses"
        critical = True

        @hookimpl
        def on_fit_start(self):
            raise PluginError("refuses: bad option")

    engine = make_engine(run_dir=tmp_path, plugins=[Checkpoint(), Refuses()])
    with pytest.raises(PluginError):
        engine.fit(max_steps=3)
    assert not (tmp_path / "checkpoints").exists() or not list(
        (tmp_path / "checkpoints").glob("step-*")
    )


def test_every_steps_is_a_deprecated_alias_of_every(make_engine, tmp_path):
    import structlog

    with structlog.testing.capture_logs() as logs:
        plugin = Checkpoint(every_steps=2, keep_last=0, save_on_end=False)
    assert plugin.every == 2
    (warning,) = [e for e in logs if e["event"] == "deprecated_option"]
    assert warning["log_level"] == "warning" and warning["option"] == "every_steps"
    assert warning["use"] == "every"
    make_engine(batches=6, run_dir=tmp_path, plugins=[plugin]).fit(max_steps=5)
    assert names(tmp_path) == ["step-00000002", "step-00000004"]
    with pytest.raises(PluginError, match="checkpoint: option every_steps"):
        Checkpoint(every_steps=-1)


def test_a_config_file_with_every_steps_still_loads(tmp_path):
    from hookloop.lm.config import load_config
    from hookloop.loading import plugins_from_config

    (tmp_path / "run.toml").write_text("[plugins.checkpoint]\nevery_steps = 7\nkeep_last = 1\n")
    config = load_config(tmp_path / "run.toml")
    (loaded,) = [p for p in plugins_from_config(config["plugins"]) if p.name == "checkpoint"]
    assert loaded.plugin.every == 7 and loaded.plugin.keep_last == 1
