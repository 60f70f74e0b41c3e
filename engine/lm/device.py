"""Which device a run trains on: `training.device` resolved and checked against this machine.

Imports torch only when the name is not `cpu`, so commands check a config quickly.
"""

from __future__ import annotations

from hookloop.errors import ConfigError

__all__ = ["resolve_device"]


def resolve_device(device: str) -> str:
    """`auto` becomes `cuda` when a GPU is available, else `cpu`; other names are checked.

    Raises:
        ConfigError: not a device name torch knows, or a device this machine does not have
            (`cuda` without a GPU, `cuda:3` with two).
    """
    if device == "cpu":
        return device  # without importing torch, so a config error is found in a blink
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            return device
    if device == "cuda" and torch.distributed.is_initialized():
        from hookloop.distributed import rank_device

        device = rank_device(device)  # under torchrun, `cuda` is the rank's own GPU
    fix = "use auto, cpu, or a device this machine has"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"training.device {device!r} is not a device name; {fix}") from None
    if parsed.type == "cpu":
        return device
    backend = getattr(torch, parsed.type, None) if parsed.type in ("cuda", "mps", "xpu") else None
    if backend is None or not backend.is_available():
        raise ConfigError(f"training.device {device!r}: this machine has no {parsed.type}; {fix}")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if parsed.index is not None and parsed.index >= count:
        raise ConfigError(
            f"training.device {device!r}: this machine has {count} {parsed.type} device(s) "
            f"(0 to {count - 1}); {fix}"
        )
    return device
