"""The MLflow calls of the `mlflow` plugin, made in the tracker process.

Not a plugin: no entry point. Imported by `hookloop.plugins.tracking.process` in its own
process, so it imports neither torch nor hookloop's engine.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hookloop.plugins.tracking.backend import TrackerBackend, TrackerRow

__all__ = ["MLflowBackend"]

BATCH = 1000  # MLflow's limit on metrics per log_batch call
PARAM_BATCH = 100  # and on params per call


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

    def log_rows(self, rows: list[TrackerRow]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for step, values in rows for k, v in values.items()]
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + BATCH])

    def finish(self, status: str, artifacts: list[Path]) -> None:
        for path in artifacts:
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status)
