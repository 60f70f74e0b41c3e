"""Track the run in Weights & Biases: config, every step's metrics, tags and artifacts.

    [plugins.wandb]
    project = "hookloop"   # W&B project
    entity = ""            # team or user; "" = your default
    name = ""              # run name; "" = the run directory's name
    mode = ""              # "online", "offline" or "disabled"; "" = $WANDB_MODE, else
                           # online when an API key is configured, offline otherwise
    dir = ""               # where W&B writes its files; "" = the run directory
    every = 1              # log every N optimizer steps (steps with an evaluation always)
    flush_every = 50       # hand the logged steps to W&B in batches of this many
    timeout = 60.0         # seconds fit()'s end waits for W&B before giving up

Needs the optional extra: `pip install '.[wandb]'` in the hookloop checkout. Without
`WANDB_API_KEY` (or a `~/.netrc` entry from `wandb login`) the run is written offline under
`<run_dir>/wandb/`, never prompting and never waiting on the network; `wandb sync
<run_dir>/wandb/offline-run-*` uploads it later. Logged: the resolved config with dotted keys,
each logged step's `loss`, `ema_loss`, `ppl`, `lr`, `grad_norm`, `tokens_per_s`, `val_loss`,
... at the optimizer step, tags `hookloop.version=...`, `hookloop.world_size=...`,
`git.commit=...`, and at the end an artifact `hookloop-<run id>` with `config.toml`,
`metrics.csv`, `metrics.png` and the final `model.safetensors`.

Resume: the W&B run id is saved in the checkpoint; `--resume` calls `wandb.init(id=...,
resume="allow")`. W&B drops steps that go backwards, so the steps the run already holds
(online: the server's step; offline: the earlier offline files of the run, read by
`hookloop.plugins.tracking.wandbfile`) are not logged again: each step appears once. Offline, each
start writes a folder of its own with the same run id; `wandb sync` uploads them in order.

Non-critical, rank 0 only. Every W&B call runs in a tracker process of its own (see
`hookloop.plugins.tracking.process`), which starts its own W&B service (an inherited
`WANDB_SERVICE` is not used): a failure is logged once, journaled and the plugin disabled;
training goes on. Hooks: `on_fit_start`, `after_step`, `on_eval_end`, `on_fit_end`,
`on_exception`, `on_save_checkpoint`, `on_load_checkpoint`.
Cost: a reference kept per step; every `flush_every` logged steps one stacked copy to the host
(asynchronous on a GPU) and one JSON line to the tracker process.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from hookloop import PluginError
from hookloop.options import check_choice
from hookloop.plugins.tracking.plugin import TrackerPlugin

if TYPE_CHECKING:
    from hookloop import Engine

__all__ = ["WandB", "api_key_configured", "resolve_mode"]

MODES = ("online", "offline", "disabled")


def api_key_configured() -> bool:
    """True when W&B has an API key: `WANDB_API_KEY`, or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host or "api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    """The mode a run uses: the option, else `$WANDB_MODE`, else online only with a key."""
    if mode:
        return mode
    env = os.environ.get("WANDB_MODE", "")
    if env in MODES:
        return env
    return "online" if api_key_configured() else "offline"


class WandB(TrackerPlugin):
    """Log the run to W&B (see the module docstring for options)."""

    name = "wandb"
    backend_class = "hookloop.plugins.tracking.wandbbackend:WandBBackend"

    def __init__(
        self,
        *,
        project: str = "hookloop",
        entity: str = "",
        name: str = "",
        mode: str = "",
        dir: str = "",
        every: int = 1,
        flush_every: int = 50,
        timeout: float = 60.0,
    ) -> None:
        super().__init__(every=every, flush_every=flush_every, timeout=timeout)
        for option, value in (
            ("project", project),
            ("entity", entity),
            ("name", name),
            ("dir", dir),
        ):
            if not isinstance(value, str):
                raise PluginError(f"wandb: option {option} must be a string, got {value!r}")
        check_choice(self.name, "mode", mode, ("", *MODES))
        self.require("wandb", "wandb")
        self.project, self.entity, self.run_name = project or "hookloop", entity, name
        self.mode, self.dir = mode, dir

    def backend_options(self, engine: Engine) -> dict[str, Any]:
        if self.dir:
            directory = Path(self.dir)
        elif engine.run_dir is not None:
            directory = engine.run_dir
        else:
            raise PluginError("wandb: the engine has no run_dir; set [plugins.wandb] dir")
        name = self.run_name or (engine.run_dir.name if engine.run_dir else None)
        return {
            "project": self.project,
            "entity": self.entity or None,
            "name": name,
            "mode": resolve_mode(self.mode),
            "directory": str(directory.resolve()),
            "timeout": self.timeout,
        }
