"""Track the run in MLflow: config as params, every step's metrics, tags and artifacts.

    [plugins.mlflow]
    tracking_uri = ""        # "" = $MLFLOW_TRACKING_URI, else sqlite:///<run_dir>/mlflow.db
    experiment = "hookloop"  # experiment name (created when missing)
    run_name = ""            # "" = the run directory's name
    every = 1                # log every N optimizer steps (steps with an evaluation always)
    flush_every = 50         # send the logged steps to MLflow in batches of this many
    timeout = 60.0           # seconds fit()'s end waits for MLflow before giving up

Needs the optional extra: `pip install 'hookloop[mlflow]'`. The resolved config is logged
as params with dotted keys (`model.d_model`), each logged step's `loss`, `ema_loss`, `ppl`,
`lr`, `grad_norm`, `tokens_per_s`, `val_loss`, ... with the optimizer step as MLflow's step,
tags `hookloop.version`, `hookloop.world_size` and `git.commit` (when the working directory
is a git checkout), and at the end `config.toml`, `metrics.csv`, `metrics.png` and the final
`model.safetensors` as artifacts. The default store is a sqlite database in the run
directory, with artifacts beside it in `mlartifacts/`: `mlflow ui --backend-store-uri
sqlite:///<run_dir>/mlflow.db` shows it.

Resume: the MLflow run id is saved in the checkpoint, so `--resume` continues the same run;
steps MLflow already holds (a run killed after logging a step but before its checkpoint)
are not logged twice. A run that ends normally is marked FINISHED, one that raised FAILED
(KILLED on Ctrl-C); one killed outright stays RUNNING until resumed.

Non-critical, rank 0 only. Every MLflow call runs on a worker thread (see
`hookloop.plugins._tracker`): a failing or unreachable store is logged once, journaled and
the plugin disabled; training goes on. Hooks: `on_fit_start`, `after_step`, `on_eval_end`,
`on_fit_end`, `on_exception`, `on_save_checkpoint`, `on_load_checkpoint`.
Cost: a few scalar reads per logged step (one asynchronous copy on a GPU), and a batch handed
to the worker every `flush_every` logged steps.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hookloop import PluginError
from hookloop.plugins._tracker import Row, TrackerBackend, TrackerPlugin

if TYPE_CHECKING:
    from hookloop import Engine

__all__ = ["MLflow", "MLflowBackend"]

BATCH = 1000  # MLflow's limit of metrics per log_batch call
PARAM_BATCH = 100  # and of params


class MLflow(TrackerPlugin):
    """Log the run to MLflow (see the module docstring for options)."""

    name = "mlflow"

    def __init__(
        self,
        *,
        tracking_uri: str = "",
        experiment: str = "hookloop",
        run_name: str = "",
        every: int = 1,
        flush_every: int = 50,
        timeout: float = 60.0,
    ) -> None:
        super().__init__(every=every, flush_every=flush_every, timeout=timeout)
        for option, value in (
            ("tracking_uri", tracking_uri),
            ("experiment", experiment),
            ("run_name", run_name),
        ):
            if not isinstance(value, str):
                raise PluginError(f"mlflow: option {option} must be a string, got {value!r}")
        if not experiment:
            raise PluginError("mlflow: option experiment must be a name, got ''")
        self.require("mlflow", "mlflow")
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name

    def backend(self, engine: Engine) -> MLflowBackend:
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        artifacts = None
        if not uri:
            if engine.run_dir is None:
                raise PluginError(
                    "mlflow: the engine has no run_dir; set [plugins.mlflow] tracking_uri"
                )
            uri = f"sqlite:///{(engine.run_dir / 'mlflow.db').resolve()}"
            artifacts = (engine.run_dir / "mlartifacts").resolve().as_uri()
        name = self.run_name or (engine.run_dir.name if engine.run_dir else "hookloop")
        return MLflowBackend(uri, self.experiment, name, artifacts)


class MLflowBackend(TrackerBackend):
    """The MLflow calls, through `mlflow.MlflowClient` (no global MLflow state is touched).

    Args:
        tracking_uri: Where the runs are stored.
        experiment: The experiment's name; created when missing.
        run_name: The name a new run gets.
        artifact_location: Where a new experiment keeps artifacts (None: MLflow's default).
    """

    def __init__(
        self, tracking_uri: str, experiment: str, run_name: str, artifact_location: str | None
    ) -> None:
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.artifact_location = artifact_location
        self.client: Any = None
        self.run_id = ""
        self._params: dict[str, str] = {}

    def open(self, run_id: str | None) -> tuple[str, dict[str, int]]:
        from mlflow import MlflowClient

        self.client = client = MlflowClient(tracking_uri=self.tracking_uri)
        if run_id is not None:
            run = client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
            self.run_id, self._params = run_id, dict(run.data.params)
            last = {
                key: max((m.step for m in client.get_metric_history(run_id, key)), default=-1)
                for key in run.data.metrics
            }
            return run_id, last
        found = client.get_experiment_by_name(self.experiment)
        experiment_id = (
            found.experiment_id
            if found is not None
            else client.create_experiment(self.experiment, self.artifact_location)
        )
        self.run_id = client.create_run(experiment_id, run_name=self.run_name).info.run_id
        return self.run_id, {}

    def log_params(self, params: dict[str, str], tags: dict[str, str]) -> None:
        from mlflow.entities import Param, RunTag

        # MLflow refuses to change a logged param: a resume with a changed key (say
        # training.max_steps) records the new value as a tag `resumed.<key>` instead.
        new = {k: v[:6000] for k, v in params.items() if k not in self._params}
        tags = {
            **tags,
            **{f"resumed.{k}": v for k, v in params.items() if self._params.get(k, v) != v},
        }
        items = list(new.items())
        for i in range(0, max(len(items), 1), PARAM_BATCH):
            self.client.log_batch(
                self.run_id,
                params=[Param(k, v) for k, v in items[i : i + PARAM_BATCH]],
                tags=[RunTag(k, v) for k, v in tags.items()] if i == 0 else [],
            )

    def log_rows(self, rows: list[Row]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for step, values in rows for k, v in values.items()]
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + BATCH])

    def finish(self, status: str, artifacts: list[Path]) -> None:
        for path in artifacts:
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status)
