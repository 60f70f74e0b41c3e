"""The hook this package adds for other plugins to implement.

A package's new hooks carry its own prefix (`token_budget_`), so they never collide with
hookloop's hooks or another package's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hookloop import hookspec

if TYPE_CHECKING:
    from hookloop import Engine, State


@hookspec
def token_budget_exhausted(engine: Engine, state: State, budget: int) -> None:
    """The run has consumed its token budget and is about to stop.

    Fires: once, in `after_step` of the step that crossed the budget, before the stop.
    Valid: `state.tokens_seen >= budget`; `state.should_stop` is already set.

    Args:
        engine: The engine running the loop.
        state: The run's progress record.
        budget: The budget that was reached, in tokens.
    """
