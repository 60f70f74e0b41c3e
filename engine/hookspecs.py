"""Hook specifications: every point in the loop where a plugin can act.

A plugin is any object with methods named after these hooks and marked with
`hookloop.hookimpl`. A method takes only the arguments it uses, by name.

**Order.** Within one hook, implementations run in the order `hookloop plugins --order`
prints. hookloop resolves it once when a run starts: plugins are sorted by the `before` and
`after` names they declare (a cycle is an error), ties keep the order they were given in,
and `@hookimpl(tryfirst=True)` / `@hookimpl(trylast=True)` then pin an implementation to the
front or back of that one hook. Loggers are `trylast` so they see every metric that other
plugins wrote in the same hook.

**The loop**, with the hook fired at each point (`N` = micro-batches per optimizer step):

```text
on_fit_start                                  # fit(); after any resume has been applied
[torchrun: the ranks agree on stopping]
while no stop requested and epochs remain:
    for each group of N micro-batches:        # _run_epoch(): the rest of this epoch
        stop here if should_stop or max_steps reached
        before_step                           # _step(): metrics cleared, skip_step reset
        N x (forward, loss / N, backward)     # _forward_backward()
        after_backward                        # grads final; may set state.skip_step
        optimizer.step() unless skip_step
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        after_step                            # may set state.should_stop
        [torchrun: the ranks agree on stopping]  # one rank's request stops them all
    state.epoch += 1; on_epoch_end            # only when the epoch's data ran out
    [torchrun: the ranks agree on stopping]
on_fit_end                                    # normal end or stop request
on_exception                                  # instead of on_fit_end when the loop raised
```

Under torchrun the loop never reads `should_stop` directly: it acts on what the ranks last
agreed at the points marked above, so a request made on one rank, in a hook or by a signal
handler at any moment, stops every rank at the same step.

`hookloop doctor` (not `fit()`) collects `doctor_checks` from every plugin before it runs
its checklist.

`engine.evaluate()` may be called from any hook; it fires `on_eval_end` when it finishes.
A checkpoint save collects `on_save_checkpoint` from every plugin; a resume hands each plugin
its own saved dict through `on_load_checkpoint` before `on_fit_start`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from collections.abc import Callable

    from hookloop.engine import Engine
    from hookloop.findings import Finding, Subject
    from hookloop.state import State

__all__ = ["hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("hookloop")
hookimpl = pluggy.HookimplMarker("hookloop")


# --- lifecycle ---------------------------------------------------------------------------


@hookspec
def on_fit_start(engine: Engine, state: State) -> None:
    """The run is about to take its first step.

    Fires: once per `fit()` call, before the first `before_step`, after a resume (if any)
    has restored the model, optimizer, counters and plugin states.
    Valid: `state.step` is the step the run continues from (0 for a fresh run);
    `engine.run_dir` exists if the run has one. Open files and start timers here.

    Args:
        engine: The engine running the loop.
        state: The run's progress record.
    """


@hookspec
def on_fit_end(engine: Engine, state: State) -> None:
    """The loop has ended normally: `max_steps` or `epochs` reached, or a stop was requested.

    Fires: once per `fit()` call, after the last `after_step` / `on_epoch_end`.
    Valid: `state.should_stop` holds the stop reason, or is None for a run that reached its
    planned length. Not fired when the loop raised (see `on_exception`).

    Args:
        engine: The engine running the loop.
        state: The run's progress record.
    """


@hookspec
def on_exception(engine: Engine, state: State, error: BaseException) -> None:
    """The loop raised; the error is re-raised after every implementation has run.

    Fires: once, from anywhere inside `fit()` (a hook, the forward, the optimizer, the data),
    including `KeyboardInterrupt`. An implementation that raises here is logged and ignored,
    so the original error is the one the caller sees.
    Valid: the model and optimizer may be mid-step: `state.step` counts completed steps only.
    Check that parameters are finite before saving them.

    Args:
        engine: The engine running the loop.
        state: The run's progress record.
        error: The exception that ended the loop.
    """


# --- step hooks, in the order they fire --------------------------------------------------


@hookspec
def before_step(engine: Engine, state: State) -> None:
    """An optimizer step is about to begin.

    Fires: once per optimizer step, before the forward pass of its first micro-batch.
    Valid: `state.step` is the index of the step about to run (0-based); `state.metrics` is
    empty; `state.skip_step` is False. Set the learning rate here.

    Args:
        engine: The engine running the loop.
        state: The run's progress record.
    """


@hookspec
def after_backward(engine: Engine, state: State) -> None:
    """The gradients of every micro-batch of this step are accumulated; nothing stepped yet.

    Fires: once per optimizer step, after the last micro-batch's `backward()`, before
    `optimizer.step()`.
    Valid: every `param.grad` is final (under fp16 still scaled: call
    `engine.unscale_gradients()` before reading it); `state.loss` is this step's mean loss as
    a detached tensor; `state.step` is not yet advanced. Set `state.skip_step = True` to skip
    the optimizer update.

    Args:
        engine: The engine running the loop.
        state: The run's progress record.
    """


@hookspec
def after_step(engine: Engine, state: State) -> None:
    """An optimizer step has finished.

    Fires: once per optimizer step, after `optimizer.step()` (or its skip) and
    `zero_grad(set_to_none=True)`.
    Valid: `state.step` already counts this step; `state.loss` and `state.metrics` hold this
    step's values; gradients are gone. Log, evaluate, checkpoint or request a stop here.

    Args:
        engine: The engine running the loop.
        state: The run's progress record.
    """


# --- epoch and evaluation ----------------------------------------------------------------


@hookspec
def on_epoch_end(engine: Engine, state: State) -> None:
    """A full pass over the training data has finished.

    Fires: after the `after_step` of the epoch's last step, unless the run stopped mid-epoch.
    Valid: `state.epoch` already counts the epoch that ended and `state.epoch_batch` is 0,
    so a checkpoint written here resumes at the start of the next epoch.

    Args:
        engine: The engine running the loop.
        state: The run's progress record.
    """


@hookspec
def on_eval_end(engine: Engine, state: State, metrics: dict[str, float]) -> None:
    """`engine.evaluate()` has measured the validation data.

    Fires: at the end of every `engine.evaluate()` call, whoever made it.
    Valid: the model is back in training mode; `metrics` holds `val_loss` (mean
    cross-entropy per token, in nats) and `val_ppl` (its exponential), plus anything an
    earlier implementation of this hook added.

    Args:
        engine: The engine running the loop.
        state: The run's progress record.
        metrics: The validation metrics; implementations may add keys.
    """


# --- state round-trip --------------------------------------------------------------------


@hookspec
def on_save_checkpoint(engine: Engine, state: State) -> dict[str, Any] | None:
    """Return this plugin's state to store in a checkpoint, or None if it has none.

    Fires: whenever a checkpoint is written, between two steps.
    Valid: the model and optimizer are consistent with `state.step`.

    Args:
        engine: The engine running the loop.
        state: The run's progress record.

    Returns:
        A dict of JSON-compatible values (str, int, float, bool, None, lists, dicts). It is
        stored under the plugin's registered name and handed back to the same plugin only.
    """


@hookspec
def on_load_checkpoint(engine: Engine, state: State, saved: dict[str, Any]) -> None:
    """Restore this plugin's state from a checkpoint.

    Fires: when a checkpoint is loaded, before `on_fit_start`, and only for a plugin that
    returned a dict from `on_save_checkpoint` when the checkpoint was written.
    Valid: the model, optimizer and `state` counters are already restored.

    Args:
        engine: The engine running the loop.
        state: The run's progress record.
        saved: Exactly the dict this plugin returned from `on_save_checkpoint`.
    """


# --- diagnosis ---------------------------------------------------------------------------


@hookspec
def doctor_checks(engine: Engine) -> list[Callable[[Subject], Finding]]:
    """Contribute checks to the checklist of `hookloop doctor`.

    Fires: once per `hookloop doctor` run (`hookloop.lm.doctor.diagnose()`), after the engine
    of the configured run is built and before any check runs; never during `fit()`.
    Valid: the model is untrained and has no gradients; `engine.plugins` holds every enabled
    plugin. Each returned check is called with a `hookloop.findings.Subject` (model,
    optimizer, a few real batches, loss_fn, vocab_size, engine) and returns one
    `hookloop.findings.Finding` (check name, "PASS" / "WARN" / "FAIL", the number behind it).
    A check that raises is reported as a FAIL naming the error. Checks that train should
    work on a copy (`copy.deepcopy((subject.model, subject.optimizer))`).

    Args:
        engine: The engine of the configured run.

    Returns:
        The plugin's checks, run after the built-in ones in the order returned.
    """
