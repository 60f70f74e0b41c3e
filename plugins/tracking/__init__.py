"""The experiment-tracker plugins' machinery (`mlflow`, `wandb`; not a plugin).

Training process:
- `plugin`: `TrackerPlugin`, the base class of both plugins (files rows, ships batches).
- `link`: `TrackerLink`, the training process's end of a tracker process.

Tracker process (`python -m hookloop.plugins.tracking.process`; imports no torch):
- `process`: the child's message loop, its lock on the run, `new_rows`.
- `backend`: `TrackerBackend`, the calls a tracker makes, and `TrackerRow`, what it logs.
- `mlflowbackend`, `wandbbackend`: the two backends.
- `wandbfile`: reads an offline W&B run file (the steps a run already holds).

This `__init__` imports nothing, so the tracker process stays free of torch.
"""
