"""What the logger plugins (`console`, `csv`, `tensorboard`, `progress`, `mlflow`, `wandb`)
share (not a plugin). The rows they log travel through `hookloop.plugins.stepvalues.steplog`.

- `base`: the planned length of a run (`planned_steps`) and `ClosesAtEnd`.
- `csvfile`: the metrics CSV file behind the `csv` plugin (`MetricsFile`).
"""
