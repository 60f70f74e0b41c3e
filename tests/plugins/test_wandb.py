"""The wandb plugin against the real wandb package in offline mode, read back from the
offline run files: offline without a key (no prompt, no network), config, every step once
(also after kill -9 and resume), artifacts, failures that leave training alone."""

from __future__ import annotations

import json
import os

import pytest

from hookloop import PluginError
from hookloop.plugins.eval import Eval

pytest.importorskip("wandb")
from hookloop.plugins.tracking.wandbfile import history_rows, offline_run_files, records  # noqa: E402
from hookloop.plugins.wandb import WandB, resolve_mode  # noqa: E402


@pytest.fixture(autouse=True)
def no_key(monkeypatch, tmp_path):
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no ~/.config/wandb
    monkeypatch.setenv("WANDB_SILENT", "true")
    # as under a launcher that used wandb: a parent's W&B service, which the tracker process
    # must not use (it outlives a killed run); a dead socket fails any run that connects
    monkeypatch.setenv("WANDB_SERVICE", f"3-{os.getppid()}-unix-{tmp_path}/gone.sock")


def the_run_file(run_dir, run_id):
    (path,) = offline_run_files(run_dir / "wandb", run_id)
    return path


def test_offline_without_a_key_logs_config_steps_and_artifacts(make_engine, tmp_path):
    assert resolve_mode("") == "offline"
    config = {"model": {"d_model": 8}, "training": {"max_steps": 6}}
    tracker = WandB(flush_every=2)
    engine = make_engine(
        batches=6,
        run_dir=tmp_path,
        config=config,
        plugins=[Eval(every=3, max_batches=1), tracker],
    )
    engine.fit(max_steps=6)
    path = the_run_file(tmp_path, tracker.run_id)
    rows = history_rows(path)
    assert [step for step, _ in rows] == [1, 2, 3, 4, 5, 6]
    assert all({"loss", "ema_loss", "ppl"} <= set(values) for _, values in rows)
    assert [step for step, values in rows if "val_loss" in values] == [3, 6]
    assert rows[-1][1]["loss"] == pytest.approx(float(engine.state.loss))
    kinds = [r.WhichOneof("record_type") for r in records(path)]
    assert "artifact" in kinds and kinds[-1] == "exit"
    run = [r.run for r in records(path) if r.WhichOneof("record_type") == "run"][-1]
    assert run.run_id == tracker.run_id and run.display_name == tmp_path.name
    assert {"hookloop.version=0.1.0", "hookloop.world_size=1"} <= set(run.tags)
    config_items = {
        i.key: json.loads(i.value_json)
        for r in records(path)
        if r.WhichOneof("record_type") == "config"
        for i in r.config.update
    }
    assert config_items["model.d_model"] == "8" and config_items["training.max_steps"] == "6"


def test_mode_follows_option_env_and_key(monkeypatch):
    assert resolve_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert resolve_mode("") == "online"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("") == "online"


def test_bad_options_are_one_line_errors():
    with pytest.raises(PluginError, match="mode must be one of"):
        WandB(mode="cloud")
    with pytest.raises(PluginError, match="every must be an integer >= 1"):
        WandB(every=0)


@pytest.mark.slow
def test_kill_9_between_a_logged_step_and_its_checkpoint_then_resume(tmp_path, tracker_run):
    run_dir = tmp_path / "run"
    killed = tracker_run.kill("wandb", run_dir, 7)  # steps past checkpoint 4 are on disk
    assert killed.returncode == -9, killed.stderr[-2000:]
    (first,) = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    run_id = first.stem.removeprefix("run-")

    # The killed run's tracker process ends its W&B run on its own (writing the last step it
    # was given), holding the run's lock until then: the resume waits for it, so it never
    # reads the killed start's file half-written. Its W&B service was its own (an inherited
    # one, see no_key, would still hold the run id and refuse the resume: "run ID in use").
    engine = tracker_run.resume("wandb", run_dir)  # from checkpoint 4
    assert engine.state.step == 10 and not engine.hooks.disabled
    files = offline_run_files(run_dir / "wandb", run_id)  # the same run id, started twice
    assert files[0] == first and len(files) == 2
    before, after = history_rows(first), history_rows(files[1])
    assert len(before) >= 5  # steps past the checkpoint
    assert [s for s, _ in before + after] == list(range(1, 11))  # each step exactly once
    assert after[-1][1]["loss"] == pytest.approx(float(engine.state.loss))


def test_a_tracker_error_disables_the_plugin_once_and_training_goes_on(make_engine, tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where W&B wants a directory")
    engine = make_engine(batches=5, run_dir=tmp_path, plugins=[WandB(dir=str(blocked))])
    assert engine.fit(max_steps=5).step == 5
    assert "wandb" in engine.hooks.disabled
    events = [json.loads(line) for line in (tmp_path / "journal.jsonl").read_text().splitlines()]
    (disabled,) = [e for e in events if e["event"] == "plugin_disabled"]
    assert disabled["plugin"] == "wandb"
