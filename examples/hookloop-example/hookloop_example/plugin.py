"""Stop a run once it has trained on a given number of tokens.

    [plugins.token_budget]
    max_tokens = 5_000_000   # stop after this many training tokens; unset = only report

Hooks: `on_fit_start`, `after_step`, `on_fit_end`. Adds the hook `token_budget_exhausted`
(see `hookloop_example.hookspecs`) so other plugins can react, e.g. to send a notification.
Cost: one integer comparison per step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from hookloop import PluginError, hookimpl
from hookloop_example import hookspecs

if TYPE_CHECKING:
    from hookloop import Engine, State

__all__ = ["TokenBudget"]

log = structlog.get_logger("hookloop_example")


class TokenBudget:
    """Request a stop when `state.tokens_seen` reaches `max_tokens`."""

    name = "token_budget"
    hookspecs = hookspecs  # hookloop adds these specifications before registering plugins
    critical = True

    def __init__(self, *, max_tokens: int | None = None) -> None:
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise PluginError(
                f"token_budget: option max_tokens must be a positive integer, got {max_tokens!r}"
            )
        self.max_tokens = max_tokens
        self.exhausted_at: int | None = None

    @hookimpl
    def on_fit_start(self, state: State) -> None:
        self.exhausted_at = None
        if self.max_tokens is not None and state.tokens_seen >= self.max_tokens:
            state.request_stop(f"token budget of {self.max_tokens} already spent")

    @hookimpl
    def after_step(self, engine: Engine, state: State) -> None:
        if self.max_tokens is None or self.exhausted_at is not None:
            return
        if state.tokens_seen >= self.max_tokens:
            self.exhausted_at = state.step
            state.request_stop(f"token budget of {self.max_tokens} tokens reached")
            engine.hook.token_budget_exhausted(engine=engine, state=state, budget=self.max_tokens)

    @hookimpl
    def on_fit_end(self, state: State) -> None:
        log.info("token_budget", tokens_seen=state.tokens_seen, max_tokens=self.max_tokens)
