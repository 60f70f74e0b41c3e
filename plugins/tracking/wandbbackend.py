"""The W&B calls of the `wandb` plugin, made in the tracker process.

Not a plugin: no entry point. Imported by `hookloop.plugins.tracking.process` in its own
process, so it imports neither torch nor hookloop's engine.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from hookloop.plugins.tracking.backend import TrackerBackend, TrackerRow
from hookloop.plugins.tracking.wandbfile import history_steps, offline_run_files

__all__ = ["WandBBackend"]


class WandBBackend(TrackerBackend):
    """The W&B calls: one `wandb.init` run, logged with explicit steps."""

    def __init__(
        self,
        *,
        project: str,
        entity: str | None,
        name: str | None,
        mode: str,
        directory: str,
        timeout: float,
    ) -> None:
        self.project, self.entity, self.name, self.mode = project, entity, name, mode
        self.directory, self.timeout = Path(directory), timeout
        self.run: Any = None

    def open(self, run_id: str | None) -> tuple[str, dict[str, int]]:
        import wandb

        self.directory.mkdir(parents=True, exist_ok=True)
        run_id = run_id or secrets.token_hex(4)
        # earlier offline starts of this run (before the one init creates now)
        earlier = offline_run_files(self.directory / "wandb", run_id)
        self.run = wandb.init(
            project=self.project,
            entity=self.entity,
            name=self.name,
            id=run_id,
            resume="allow",
            dir=str(self.directory),
            mode=self.mode,
            reinit="create_new",
            settings=wandb.Settings(
                silent=True, console="off", init_timeout=self.timeout, disable_code=True
            ),
        )
        last = self.run.step - 1 if self.run.resumed else -1  # online: the server's step
        for path in earlier:
            last = max([last, *history_steps(path)])
        return run_id, {"*": last}

    def log_params(self, params: dict[str, str], tags: dict[str, str]) -> None:
        self.run.config.update(params, allow_val_change=True)
        self.run.tags = tuple(sorted({*self.run.tags, *(f"{k}={v}"[:64] for k, v in tags.items())}))

    def log_rows(self, rows: list[TrackerRow]) -> None:
        for step, values in rows:
            self.run.log(values, step=step, commit=True)  # written now, not at the next step

    def abandon(self) -> None:
        self.run.finish(exit_code=1)  # waits for W&B to write what it was given

    def finish(self, status: str, artifacts: list[Path]) -> None:
        import wandb

        if artifacts:
            artifact = wandb.Artifact(f"hookloop-{self.run.id}", type="hookloop-run")
            for path in artifacts:
                artifact.add_file(str(path), name=path.name)
            self.run.log_artifact(artifact)
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)
