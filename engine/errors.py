"""The errors a user can cause, as one small hierarchy.

Every subclass of `HookloopError` is a user mistake (a bad config, a missing file, bad data,
a corrupt checkpoint, an unknown plugin). The CLI prints its message on one line and exits
non-zero without a traceback, so each message says what is wrong, where, and how to fix it.
Internal bugs raise anything else and keep their traceback.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "HookloopError",
    "PluginError",
    "RunLockedError",
]


class HookloopError(Exception):
    """Base class of every error caused by the user rather than by a bug in hookloop."""


class ConfigError(HookloopError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


class PluginError(HookloopError):
    """A plugin is unknown, misconfigured, declared twice, or failed inside a hook."""


class CheckpointError(HookloopError):
    """A checkpoint is missing, corrupt, partial, or does not match the configured run."""


class DataError(HookloopError):
    """Training or validation data is missing, malformed or inconsistent with the model."""


class RunLockedError(HookloopError):
    """Another live process holds the run directory's lock (see `hookloop.runlock`)."""
