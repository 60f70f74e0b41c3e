"""The one device-to-host copy of the plugins: a 1-D tensor of step values queued now and
read later, so that reading it waits for nothing (or for as little as possible).

On CUDA, `HostCopy.start()` copies into pinned host memory, non-blocking, followed by an
event, so the copy waits only for the work queued before it; `landed` asks the event and
`read()` waits for it. Other devices are read in place (CPU: nothing to copy).

A `HostCopy(buffered=True)` keeps one host buffer (pinned on CUDA, NumPy-backed elsewhere)
and reuses it while the shape stays the same, so a copy made every step allocates nothing;
it is read through a NumPy view: a memory read, not a device sync.

Its users: `steplog.StepLog` (the loggers' rows, one copy per device and batch, read with
one `tolist()` on the steps they log), `measure.LateRead` (buffered: the guards' values,
read a step late) and `to_floats` (values read now).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any, TypeVar

import numpy
import torch

__all__ = ["HostCopy", "split_scalars", "stacked", "to_floats"]

Key = TypeVar("Key", bound=Hashable)

_NUMPY_DTYPES = {torch.float32: numpy.float32, torch.float64: numpy.float64}


class HostCopy:
    """A 1-D float tensor on its way to the host: queued by `start()`, read by `read()`.

    Args:
        buffered: Copy into a host buffer kept between copies and read it through NumPy
            (for a copy made every step and read a step later); otherwise read a fresh
            pinned copy (CUDA) or the tensor itself (other devices) with one `tolist()`.
    """

    __slots__ = ("_buffered", "_event", "_host", "_view")

    def __init__(self, *, buffered: bool = False) -> None:
        self._buffered = buffered
        self._host: torch.Tensor | None = None
        self._view: Any = None  # a NumPy view of the buffer (buffered only)
        self._event: Any = None  # marks the landing of a CUDA copy; None: landed

    def start(self, values: torch.Tensor) -> None:
        """Queue the copy of the 1-D float32 or float64 tensor `values` and return."""
        cuda = values.device.type == "cuda"
        values = values.detach()
        if not self._buffered:
            self._host = values.to("cpu", non_blocking=True) if cuda else values  # pinned
        else:
            if self._host is None or self._host.shape != values.shape:
                if cuda:
                    self._host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
                    self._view = self._host.numpy()
                else:  # no tensor method touches it: host-sync counters see no read
                    self._view = numpy.empty(values.shape, dtype=_NUMPY_DTYPES[values.dtype])
                    self._host = torch.from_numpy(self._view)
            self._host.copy_(values, non_blocking=cuda)
        self._event = None
        if cuda:
            self._event = torch.cuda.Event()
            self._event.record()

    @property
    def landed(self) -> bool:
        """True when `read()` would not wait."""
        return self._event is None or self._event.query()

    def read(self) -> list[float]:
        """The values, waiting for the copy if it has not landed."""
        if self._event is not None:
            self._event.synchronize()
        assert self._host is not None, "read() before start()"
        return self._view.tolist() if self._buffered else self._host.tolist()


def split_scalars(
    items: Iterable[tuple[Key, Any]],
) -> tuple[list[tuple[Key, float]], dict[torch.device, list[tuple[Key, torch.Tensor]]]]:
    """Sort `(key, value)` pairs into numbers (as floats, now) and scalar tensors (by device,
    to be stacked into one `HostCopy` each). Anything else is dropped."""
    numbers: list[tuple[Key, float]] = []
    tensors: dict[torch.device, list[tuple[Key, torch.Tensor]]] = {}
    for key, value in items:
        if isinstance(value, torch.Tensor):
            if value.numel() == 1:
                tensors.setdefault(value.device, []).append((key, value))
        elif isinstance(value, (int, float)):  # bool is an int: True -> 1.0
            numbers.append((key, float(value)))
    return numbers, tensors


def stacked(tensors: list[tuple[Key, torch.Tensor]]) -> torch.Tensor:
    """The scalar tensors of one device as one float64 tensor, ready for a `HostCopy`."""
    return torch.stack([t.detach().reshape(()) for _, t in tensors]).double()


def to_floats(values: Mapping[str, Any]) -> dict[str, float]:
    """Numbers and scalar tensors of `values` as floats, now (one copy per device)."""
    numbers, by_device = split_scalars(values.items())
    floats = dict(numbers)
    for tensors in by_device.values():
        copy = HostCopy()
        copy.start(stacked(tensors))
        floats.update(zip((k for k, _ in tensors), copy.read(), strict=True))
    return {key: floats[key] for key in values if key in floats}  # in the order given
