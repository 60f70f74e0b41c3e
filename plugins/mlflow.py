"""Track the run in MLflow: config as params, every step's metrics, tags and artifacts.

    [plugins.mlflow]
    tracking_uri = ""        # "" = $MLFLOW_TRACKING_URI, else sqlite:///<run_dir>/mlflow.db
    experiment = "hookloop"  # experiment name (created when missing)
    run_name = ""            # "" = the run directory's name
    every = 1                # log every N optimizer steps (steps with an evaluation always)
    flush_every = 50         # send the logged steps to MLflow in batches of this many
    timeout = 60.0           # seconds fit()'s end waits for MLflow before giving up

Needs the optional extra: `pip install '.[mlflow]'` in the hookloop checkout. The resolved
config is logged as params with dotted keys (`model.d_model`), each logged step's `loss`,
`ema_loss`, `ppl`, `lr`, `grad_norm`, `tokens_per_s`, `val_loss`, ... with the optimizer step
as MLflow's step, tags `hookloop.version`, `hookloop.world_size` and `git.commit` (when the
working directory is a git checkout), and at the end `config.toml`, `metrics.csv`,
`metrics.png` and the final `model.safetensors` as artifacts. The default store is a sqlite
database in the run directory, with artifacts beside it in `mlartifacts/`: `mlflow ui
--backend-store-uri sqlite:///<run_dir>/mlflow.db` shows it.

Resume: the MLflow run id is saved in the checkpoint, so `--resume` continues the same run;
steps MLflow already holds (a run killed after logging a step but before its checkpoint)
are not logged twice. A run that ends normally is marked FINISHED, one that raised FAILED
(KILLED on Ctrl-C); one killed outright stays RUNNING until resumed.

Non-critical, rank 0 only. Every MLflow call runs in a tracker process of its own (see
`hookloop.plugins.tracking.process`): a failing or unreachable store is logged once, journaled
and the plugin disabled; training goes on. Hooks: `on_fit_start`, `after_step`, `on_eval_end`,
`on_fit_end`, `on_exception`, `on_save_checkpoint`, `on_load_checkpoint`.
Cost: a reference kept per step; every `flush_every` logged steps one stacked copy to the host
(asynchronous on a GPU) and one JSON line to the tracker process.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from hookloop import PluginError
from hookloop.plugins.tracking.plugin import TrackerPlugin

if TYPE_CHECKING:
    from hookloop import Engine

__all__ = ["MLflow"]


class MLflow(TrackerPlugin):
    """Log the run to MLflow (see the module docstring for options)."""

    name = "mlflow"
    backend_class = "hookloop.plugins.tracking.mlflowbackend:MLflowBackend"

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

    def backend_options(self, engine: Engine) -> dict[str, Any]:
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
        return {
            "tracking_uri": uri,
            "experiment": self.experiment,
            "run_name": name,
            "artifact_location": artifacts,
        }
