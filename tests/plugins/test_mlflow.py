"""The mlflow plugin against a real MLflow with a local sqlite store, read back with
MlflowClient: params, tags, every step once (also after kill -9 and resume), artifacts,
failures that disable the plugin and leave training alone.

Every test starts from a copy of one migrated store (`store`): MLflow creates a new sqlite
store by running its schema migrations, seconds each time."""

from __future__ import annotations

import json
import shutil

import pytest

from hookloop import PluginError
from hookloop.plugins.eval import Eval

mlflow = pytest.importorskip("mlflow")
from hookloop.plugins.mlflow import MLflow  # noqa: E402


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()  # creates the schema
    return path


@pytest.fixture
def store(empty_store, tmp_path):
    """`tmp_path/mlflow.db`, where the plugin stores a run whose run_dir is tmp_path."""
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return tmp_path


def client_for(run_dir):
    return mlflow.MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")


def only_run(client):
    runs = client.search_runs([client.get_experiment_by_name("hookloop").experiment_id])
    assert len(runs) == 1
    return runs[0]


def steps(client, run_id, key):
    return [m.step for m in client.get_metric_history(run_id, key)]


# Tests that end the tracker process (a tracker error, a timeout) come last: the others reuse
# one warm tracker process instead of importing MLflow again.


def test_logs_config_metrics_tags_and_artifacts(make_engine, store, tmp_path):
    config = {"model": {"d_model": 8, "bias": True}, "training": {"max_steps": 6}}
    engine = make_engine(
        batches=6,
        run_dir=tmp_path,
        config=config,
        plugins=[Eval(every=3, max_batches=1), MLflow(flush_every=2)],
    )
    engine.fit(max_steps=6)
    client = client_for(tmp_path)
    run = only_run(client)
    assert run.info.status == "FINISHED" and run.info.run_name == tmp_path.name
    assert run.data.params == {
        "model.d_model": "8",
        "model.bias": "True",
        "training.max_steps": "6",
    }
    assert run.data.tags["hookloop.world_size"] == "1" and "hookloop.version" in run.data.tags
    for key in ("loss", "ema_loss", "ppl"):
        assert steps(client, run.info.run_id, key) == [1, 2, 3, 4, 5, 6]
    assert steps(client, run.info.run_id, "val_loss") == [3, 6]
    history = client.get_metric_history(run.info.run_id, "loss")
    assert history[-1].value == pytest.approx(float(engine.state.loss))
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "model.safetensors" in names
    local = client.download_artifacts(run.info.run_id, "model.safetensors", str(tmp_path / "dl"))
    from safetensors.torch import load_file

    saved = load_file(local)
    assert all((saved[k] == v).all() for k, v in engine.model.state_dict().items())


def test_every_n_steps_still_logs_evaluations(make_engine, store, tmp_path):
    engine = make_engine(
        batches=5, run_dir=tmp_path, plugins=[Eval(every=5, max_batches=1), MLflow(every=2)]
    )
    engine.fit(max_steps=5)
    client = client_for(tmp_path)
    run_id = only_run(client).info.run_id
    assert steps(client, run_id, "loss") == [2, 4, 5]  # 5: its evaluation's row
    assert steps(client, run_id, "val_loss") == [5]


def test_bad_options_are_one_line_errors():
    with pytest.raises(PluginError, match="every must be an integer >= 1"):
        MLflow(every=0)
    with pytest.raises(PluginError, match="tracking_uri must be a string"):
        MLflow(tracking_uri=3)


@pytest.mark.slow
def test_kill_9_between_a_logged_step_and_its_checkpoint_then_resume(
    empty_store, tmp_path, tracker_run
):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(empty_store, run_dir / "mlflow.db")
    killed = tracker_run.kill("mlflow", run_dir, 7)  # steps past checkpoint 4 are in MLflow
    assert killed.returncode == -9, killed.stderr[-2000:]
    client = client_for(run_dir)
    run_before = only_run(client)
    assert run_before.info.status == "RUNNING"
    logged = steps(client, run_before.info.run_id, "loss")
    assert logged == list(range(1, len(logged) + 1)) and len(logged) >= 5
    values_before = [m.value for m in client.get_metric_history(run_before.info.run_id, "loss")]

    engine = tracker_run.resume("mlflow", run_dir)  # from checkpoint 4
    assert engine.state.step == 10 and not engine.hooks.disabled
    run_after = only_run(client)  # the same MLflow run, not a second one
    assert run_after.info.run_id == run_before.info.run_id
    assert run_after.info.status == "FINISHED"
    history = client.get_metric_history(run_after.info.run_id, "loss")
    assert [m.step for m in history] == list(range(1, 11))  # each step exactly once
    assert [m.value for m in history][: len(logged)] == values_before
    assert history[-1].value == pytest.approx(float(engine.state.loss))


def journaled_disables(run_dir):
    events = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    return [e for e in events if e["event"] == "plugin_disabled"]


def test_a_tracker_error_disables_the_plugin_once_and_training_goes_on(
    make_engine, store, tmp_path
):
    client = client_for(tmp_path)  # an experiment that is deleted: creating a run fails
    client.delete_experiment(client.create_experiment("gone"))
    engine = make_engine(batches=6, run_dir=tmp_path, plugins=[MLflow(experiment="gone")])
    assert engine.fit(max_steps=6).step == 6
    assert "mlflow" in engine.hooks.disabled
    (disabled,) = journaled_disables(tmp_path)
    assert disabled["plugin"] == "mlflow" and "deleted" in disabled["reason"]


def test_an_unreachable_store_never_stalls_a_step(make_engine, tmp_path):
    # MLflow retries an unopenable database for minutes: the steps do not wait for it,
    # and fit()'s end gives up after `timeout` seconds
    bad = MLflow(tracking_uri=f"sqlite:///{tmp_path}/no/such/dir/mlflow.db", timeout=1)
    engine = make_engine(batches=4, run_dir=tmp_path, plugins=[bad])
    assert engine.fit(max_steps=4).step == 4
    (disabled,) = journaled_disables(tmp_path)
    assert disabled["plugin"] == "mlflow" and "within 1s" in disabled["reason"]
