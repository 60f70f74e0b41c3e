"""An example third-party hookloop plugin package: `token_budget`."""

from hookloop_example.plugin import TokenBudget

__all__ = ["TokenBudget"]
