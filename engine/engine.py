"""The Engine: a step loop that fires hooks and owns nothing else.

It knows a model, an optimizer, training batches, optional validation batches and a
`loss_fn(model, batch)`. It owns gradient accumulation, device placement, autocast and the
fp16 grad scaler, DDP wrapping, evaluation on request and stop requests. Everything else
(clipping, schedules, checkpoints, logging, guards) is a plugin.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import structlog
import torch

from hookloop.batches import count_tokens as default_count_tokens
from hookloop.batches import epoch_batches, epoch_complete, move_to, step_groups
from hookloop.dispatch import HookDispatcher
from hookloop.distributed import StopAgreement, global_mean, rank_and_world
from hookloop.errors import ConfigError, DataError, PluginError
from hookloop.evaluation import mean_loss
from hookloop.execution import model_device, prepare_execution
from hookloop.journal import Journal
from hookloop.loading import (
    LoadedPlugin,
    as_record,
    hook_order,
    new_plugin_manager,
    order_plugins,
    plugin_rank,
    register_plugins,
)
from hookloop.logs import debug
from hookloop.losses import next_token_loss
from hookloop.state import State
from hookloop.update import can_skip_on_device, either, step_unless

__all__ = ["Engine"]

log = structlog.get_logger("hookloop")

LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]


class Engine:
    """Runs the training loop and fires a hook at every point where a plugin can act.

    Args:
        model: The module to train. It is moved to `device`.
        optimizer: An optimizer over the model's parameters.
        train_data: An iterable of micro-batches, iterated once per epoch; how a resumed
            epoch starts mid-way is `hookloop.batches.epoch_batches`.
        loss_fn: `loss_fn(model, batch) -> scalar tensor`, the mean loss of one micro-batch.
            Defaults to next-token cross-entropy over `(inputs, targets)` batches.
        val_data: An iterable of validation batches for `evaluate()`.
        plugins: Plugin instances, or `LoadedPlugin` records from `load_plugins()`.
        accumulate: Micro-batches per optimizer step. The loss of each is divided by this,
            so the summed gradient is that of one batch `accumulate` times larger.
        device: Where the model and batches live; defaults to where the model already is.
        precision: `fp32`, `bf16` (autocast) or `fp16` (autocast with a GradScaler).
        compile: Run the forward through `torch.compile`.
        run_dir: The directory plugins write files into (metrics, checkpoints, journal).
        count_tokens: Tokens in a batch; defaults to the element count of its first tensor.
        config: The resolved configuration of the run, kept for plugins and checkpoints.
        strategy: Under several processes: `ddp` (replicate) or `fsdp` (shard, FSDP2).
        reshard_after_forward: FSDP: free gathered parameters after each block's forward.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        train_data: Iterable[Any],
        *,
        loss_fn: LossFn = next_token_loss,
        val_data: Iterable[Any] | None = None,
        plugins: Sequence[object] = (),
        accumulate: int = 1,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        compile: bool = False,
        run_dir: str | Path | None = None,
        count_tokens: Callable[[Any], int] | None = None,
        config: dict[str, Any] | None = None,
        strategy: str = "ddp",
        reshard_after_forward: bool = True,
    ) -> None:
        if not isinstance(accumulate, int) or accumulate < 1:
            raise ConfigError(f"accumulate must be a whole number >= 1, got {accumulate!r}")
        self.device = torch.device(device) if device is not None else model_device(model)
        self.model = model.to(self.device)
        self.optimizer = optimizer
        self.train_data = train_data
        self.val_data = val_data
        self.loss_fn = loss_fn
        self.accumulate = accumulate
        self.precision = precision
        self.config = config or {}
        self.count_tokens = count_tokens or default_count_tokens
        self.state = State()
        self.shared: dict[type, Any] = {}
        """What this engine's plugins share, keyed by its class (the loggers' `StepLog`, the
        guards' step measurements): it lives and dies with the engine."""
        self.max_steps: int | None = None
        """The `max_steps` of the current `fit()` call, for schedules and progress."""
        self.max_epochs: int | None = None
        """The `epochs` of the current `fit()` call."""
        self.rank, self.world_size = rank_and_world()
        self.is_main_process = self.rank == 0
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if self.run_dir is not None and self.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(
            self.run_dir / "journal.jsonl" if self.run_dir and self.is_main_process else None
        )

        execution = prepare_execution(
            self.model,
            device=self.device,
            precision=precision,
            compile=compile,
            world_size=self.world_size,
            strategy=strategy,
            reshard_after_forward=reshard_after_forward,
            optimizer=optimizer,  # FSDP: pointed at the sharded parameters
        )
        self.train_model = execution.train_model
        """What the forward goes through (DDP/compile); `model` is what checkpoints save."""
        self.scaler = execution.scaler
        self._autocast = execution.autocast
        self._no_sync = execution.no_sync
        self._unscaled = False
        self._found_inf: torch.Tensor | None = None  # skip_update_if() of this step
        # Speed only (benchmarks/overhead.py): no context managers per micro-batch when
        # there is neither autocast nor DDP, and no batch move on the CPU.
        self._plain = execution.plain
        self._move_batches = self.device.type != "cpu"

        self.pm = new_plugin_manager()
        self.plugins: dict[str, LoadedPlugin] = register_plugins(self.pm, plugins)
        self.hooks = HookDispatcher(
            self.pm, plugin_rank(self.plugins), on_disable=self._journal_disabled_plugin
        )

    # --- plugins -----------------------------------------------------------------------

    def _journal_disabled_plugin(self, name: str, hook: str, error: Exception) -> None:
        self.journal.record(
            "plugin_disabled",
            step=self.state.step,
            plugin=name,
            hook=hook,
            reason=f"non-critical plugin raised {type(error).__name__}: {error}; "
            "it is disabled for the rest of the run",
        )

    def add_plugin(self, plugin: object) -> None:
        """Register one more plugin instance (or `LoadedPlugin`) and re-resolve the order.

        Raises:
            PluginError: its name is taken, the order has a cycle, or it implements a hook
                that no specification declares.
        """
        record = as_record(plugin)
        if record.name in self.plugins:
            raise PluginError(
                f"a plugin named {record.name!r} is already registered; "
                "give the new one a different `name` attribute or remove the old one first"
            )
        ordered = order_plugins([*self.plugins.values(), record])
        register_plugins(self.pm, [record])
        self.plugins = {r.name: r for r in ordered}
        self.hooks.reorder(plugin_rank(self.plugins))

    def remove_plugin(self, name: str) -> object:
        """Unregister the plugin called `name` and return its instance.

        Raises:
            PluginError: no plugin of that name is registered.
        """
        record = self.plugins.pop(name, None)
        if record is None:
            raise PluginError(
                f"no plugin named {name!r} is registered; registered: {', '.join(self.plugins)}"
            )
        if self.pm.get_plugin(name) is not None:
            self.pm.unregister(name=name)
        self.hooks.reorder(plugin_rank(self.plugins))
        return record.plugin

    @property
    def disabled_plugins(self) -> MappingProxyType[str, str]:
        """Plugins disabled during the run after a failure, with the reason (read-only)."""
        return MappingProxyType(self.hooks.disabled)

    def call_hook(self, name: str, /, **kwargs: Any) -> Any:
        """Call any hook, including one a third-party package specifies, the way the loop
        calls its own: in the resolved plugin order, timed per plugin, under the failure
        policy. Pass every argument by keyword.

        Returns:
            As pluggy: the first non-None result of a `firstresult` hook, else the list of
            non-None results.
        """
        return self.hooks.call(name, **kwargs)

    def plugin_costs(self) -> dict[str, float]:
        """Milliseconds per optimizer step spent in each plugin's hooks so far."""
        steps = max(self.state.step, 1)
        return {
            name: 1000.0 * seconds / steps
            for name, seconds in self.hooks.seconds_by_plugin().items()
        }

    def hook_order(self) -> dict[str, list[str]]:
        """For each hook, the names of the plugins that implement it, in calling order."""
        return hook_order(self.pm, plugin_rank(self.plugins))

    # --- the loop ----------------------------------------------------------------------

    def fit(self, *, max_steps: int | None = None, epochs: int | None = None) -> State:
        """Train until `max_steps` optimizer steps or `epochs` passes, whichever comes first.

        Both limits count from the start of the run, so a resumed run given the same limits
        continues to the same end. A plugin can end the run early with
        `state.request_stop(reason)`.

        Returns:
            The final state.
        """
        if max_steps is None and epochs is None:
            raise ConfigError("fit() needs max_steps or epochs (or both)")
        state = self.state
        state.should_stop = None
        self.max_steps, self.max_epochs = max_steps, epochs
        self._stop = StopAgreement(self.world_size, self.device)
        self.model.train()
        try:
            self.hooks.call("on_fit_start", engine=self, state=state)
            self._stop.agree(state)
            while not self._stop.requested(state) and (epochs is None or state.epoch < epochs):
                if not self._run_epoch(max_steps):
                    break  # a stop was requested, or max_steps reached, mid-epoch
        except BaseException as error:
            self.hooks.call_logging_errors("on_exception", engine=self, state=state, error=error)
            raise
        self.hooks.call("on_fit_end", engine=self, state=state)
        self._report_costs()
        return state

    def _run_epoch(self, max_steps: int | None) -> bool:
        """Run the rest of the current epoch. True when its data ran out (the epoch ended),
        False when a stop request or `max_steps` ended it early."""
        state = self.state
        steps_before = state.step
        batches = epoch_batches(self.train_data, state.epoch, state.epoch_batch)
        # asked before each draw, so no batch is taken from the data and left untrained on
        limit = math.inf if max_steps is None else max_steps
        stopping = lambda: self._stop.requested(state) or state.step >= limit  # noqa: E731
        for group in step_groups(batches, self.accumulate, stop=stopping):
            self._step(group)
        if stopping() and not epoch_complete(self.train_data, state.epoch_batch, self.accumulate):
            return False
        if state.step == steps_before and state.epoch_batch < self.accumulate:
            raise DataError(
                f"the training data gave fewer than accumulate={self.accumulate} "
                f"batches in epoch {state.epoch}; check the data and batch size"
            )
        # Advance first, so a checkpoint written in on_epoch_end resumes at the start of
        # the next epoch instead of ending this one twice.
        state.epoch += 1
        state.epoch_batch = 0
        self.hooks.call("on_epoch_end", engine=self, state=state)
        self._stop.agree(state)
        return True

    def _step(self, group: tuple[Any, ...]) -> None:
        """One optimizer step over a group of micro-batches."""
        state = self.state
        state.metrics.clear()
        state.skip_step, self._found_inf = False, None
        self.hooks.call("before_step", engine=self, state=state)

        n, tokens_before = len(group), state.tokens_seen
        total = self._forward_backward(group[0], n, last=n == 1)
        for i in range(1, n):
            total = total + self._forward_backward(group[i], n, last=i == n - 1)
        state.loss = total / n if n > 1 else total
        if self.world_size > 1:  # every rank sees the global loss, token-weighted
            state.loss = global_mean(state.loss, state.tokens_seen - tokens_before)
        self.hooks.call("after_backward", engine=self, state=state)

        if not state.skip_step:
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                step_unless(self.optimizer, self._found_inf)
        elif self.scaler is not None and self._unscaled:
            self.scaler.update()  # the unscale_ of a skipped step must not leak into the next
        self._unscaled = False
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        self.hooks.call("after_step", engine=self, state=state)
        self._stop.agree(state)

    def _forward_backward(self, batch: Any, n: int, *, last: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns its detached, unscaled loss."""
        if self._move_batches:
            batch = self.to_device(batch)
        if self._plain:
            loss = self.loss_fn(self.train_model, batch)
        else:
            # DDP all-reduces gradients on every backward unless told not to: only the last
            # micro-batch of a step needs it.
            with self._no_sync(last), self._autocast():
                loss = self.loss_fn(self.train_model, batch)
        scaled = loss / n if n > 1 else loss
        if self.scaler is not None:
            self.scaler.scale(scaled).backward()
        else:
            scaled.backward()
        state = self.state
        state.micro_step += 1
        state.epoch_batch += 1
        state.tokens_seen += self.count_tokens(batch) * self.world_size
        return loss.detach()

    def _report_costs(self) -> None:
        costs = self.plugin_costs()
        if costs and self.is_main_process:  # for plugin authors: `hookloop --log-level debug`
            ranked = sorted(costs.items(), key=lambda kv: -kv[1])
            debug(log, "plugin_cost_ms_per_step", **{name: round(ms, 4) for name, ms in ranked})

    # --- helpers plugins use -----------------------------------------------------------

    def to_device(self, batch: Any) -> Any:
        """Move a tensor, or tensors nested in tuples, lists and dicts, to the engine's device.

        The loop calls this for every micro-batch when the device is not the CPU; on the CPU,
        batches are used as the data gives them.
        """
        return move_to(batch, self.device)

    def unscale_gradients(self) -> None:
        """Divide fp16-scaled gradients by the loss scale, once per step. A no-op in fp32/bf16.

        Call this in `after_backward` before reading or clipping gradients.
        """
        if self.scaler is not None and not self._unscaled:
            self.scaler.unscale_(self.optimizer)
            self._unscaled = True

    def skip_update_if(self, flag: torch.Tensor) -> bool:
        """Skip this step's update on the device where `flag` (a scalar tensor) is nonzero,
        unread by the host; from `after_backward`. False when the optimizer cannot (see
        `hookloop.update`) or under fp16: then read the flag and set `state.skip_step`."""
        if self.scaler is not None or not can_skip_on_device(self.optimizer):
            return False
        self._found_inf = either(self._found_inf, flag)
        return True

    def evaluate(self, *, max_batches: int | None = None) -> dict[str, float]:
        """Mean validation loss (token-weighted) and its perplexity, then fire `on_eval_end`.

        The model is put in eval mode under `torch.no_grad()` and restored afterwards; no
        random numbers are drawn, so evaluating does not change what training does next.

        Args:
            max_batches: Evaluate at most this many validation batches.

        Returns:
            `{"val_loss": ..., "val_ppl": ...}` plus whatever `on_eval_end` plugins added.
        """
        if self.val_data is None:
            raise ConfigError("evaluate() needs validation data: pass val_data to the Engine")
        val_loss = self.validation_loss(self.val_data, max_batches)
        metrics = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700.0))}
        self.hooks.call("on_eval_end", engine=self, state=self.state, metrics=metrics)
        return metrics

    def validation_loss(self, data: Iterable[Any], max_batches: int | None = None) -> float:
        """Token-weighted mean loss over `data` (at most `max_batches` batches); no hooks."""
        kw = dict(prepare=self.to_device, count_tokens=self.count_tokens, autocast=self._autocast)
        return mean_loss(self.model, data, self.loss_fn, max_batches=max_batches, **kw)

    def plugin_states(self) -> dict[str, Any]:
        """Every plugin's `on_save_checkpoint` result, keyed by plugin name."""
        return self.hooks.collect("on_save_checkpoint", engine=self, state=self.state)

    def load_plugin_states(self, saved: dict[str, Any]) -> None:
        """Hand each registered plugin its own saved dict through `on_load_checkpoint`."""
        missing = sorted(set(saved) - set(self.plugins))
        if missing:
            detail = "these plugins saved state but are not enabled in this run"
            log.warning("checkpoint_plugin_state_ignored", plugins=missing, detail=detail)
        kwargs = {"engine": self, "state": self.state}
        self.hooks.call_each(
            "on_load_checkpoint", {n: {**kwargs, "saved": v} for n, v in saved.items()}
        )
