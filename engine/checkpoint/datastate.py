"""The training data's own position, for data that keeps one (`state_dict()` and
`load_state_dict()`, the contract of torchdata's `StatefulDataLoader`).

A checkpoint stores the data's `state_dict()` in state.json under `data.state`, as JSON:
tensors, NumPy arrays, bytes, tuples and dicts with non-string keys are tagged (never
pickled). A resume hands it back through `load_state_dict()`, and the loop then iterates the
data from where it stopped instead of replaying the epoch and skipping batches.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import structlog
import torch

from hookloop.errors import CheckpointError

__all__ = ["decode_state", "encode_state", "is_stateful", "restore_data", "saved_data_state"]

log = structlog.get_logger("hookloop")


def is_stateful(data: Any) -> bool:
    """True when `data` has both `state_dict()` and `load_state_dict()`."""
    return callable(getattr(data, "state_dict", None)) and callable(
        getattr(data, "load_state_dict", None)
    )


def saved_data_state(data: Any) -> Any:
    """The JSON form of `data.state_dict()`, or None for data without one."""
    return encode_state(data.state_dict(), "state_dict()") if is_stateful(data) else None


def restore_data(data: Any, saved: dict[str, Any], counters: dict[str, Any], where: str) -> None:
    """Put the training data back where the checkpoint `where` left it.

    Data with a saved state gets it through `load_state_dict()`. Data that defines
    `iter_epoch` resumes by itself. Any other data is replayed: the loop re-reads and drops
    the batches of the epoch already consumed, and a warning names that cost.

    Raises:
        CheckpointError: the data keeps a state but the checkpoint holds none for it
            (saved with other data), and the epoch was under way.
    """
    state, consumed = saved.get("state"), int(counters.get("epoch_batch", 0))
    if is_stateful(data):
        if state is None:
            if consumed:
                raise CheckpointError(
                    f"checkpoint {where} holds no state for the training data, which has "
                    "state_dict()/load_state_dict(), and was saved mid-epoch; resume with "
                    "the data it was saved with, or from an epoch boundary"
                )
            return
        data.load_state_dict(decode_state(state))
    elif consumed and not hasattr(data, "iter_epoch"):
        log.warning(
            "data_replay",
            batches=consumed,
            detail=f"the training data has neither iter_epoch() nor state_dict(); resuming "
            f"re-reads and drops the {consumed} batches of this epoch already trained on "
            "(their loading time, and exact only if the data repeats its order); give it "
            "state_dict()/load_state_dict() (e.g. torchdata's StatefulDataLoader) to skip that",
        )


def encode_state(value: Any, path: str = "state") -> Any:
    """A JSON value for a state made of dicts, lists, tuples, numbers, strings, None,
    bytes, tensors and NumPy arrays; the others are tagged so `decode_state` restores them.

    Raises:
        CheckpointError: a value of another type (named with its path in the state).
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: encode_state(v, f"{path}.{k}") for k, v in value.items()}
        return {
            "__items__": [
                [encode_state(k, path), encode_state(v, f"{path}[{k!r}]")] for k, v in value.items()
            ]
        }
    if isinstance(value, list):
        return [encode_state(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"__tuple__": [encode_state(v, f"{path}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode("ascii")}
    if isinstance(value, torch.Tensor):
        array = value.detach().cpu().contiguous()
        return {
            "__tensor__": base64.b64encode(
                array.reshape(-1).view(torch.uint8).numpy().tobytes()
            ).decode("ascii"),
            "dtype": str(array.dtype).removeprefix("torch."),
            "shape": list(array.shape),
        }
    if isinstance(value, (np.ndarray, np.generic)):
        array = np.array(value, order="C")  # a copy; a NumPy scalar stays 0-d
        return {
            "__ndarray__": base64.b64encode(array.tobytes()).decode("ascii"),
            "dtype": array.dtype.str,
            "shape": list(array.shape),
            "scalar": isinstance(value, np.generic),
        }
    raise CheckpointError(
        f"the training data's {path} is a {type(value).__name__}, which a checkpoint cannot "
        "store (it is JSON, never pickle); return dicts, lists, numbers, strings, bytes, "
        "tensors or NumPy arrays from state_dict()"
    )


def decode_state(value: Any) -> Any:
    """The inverse of `encode_state`."""
    if isinstance(value, list):
        return [decode_state(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__items__" in value:
        return {decode_state(k): decode_state(v) for k, v in value["__items__"]}
    if "__tuple__" in value:
        return tuple(decode_state(v) for v in value["__tuple__"])
    if "__bytes__" in value:
        return base64.b64decode(value["__bytes__"])
    if "__tensor__" in value:
        raw = bytearray(base64.b64decode(value["__tensor__"]))
        dtype = getattr(torch, value["dtype"])
        flat = (
            torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        )
        return flat.view(dtype).reshape(value["shape"]).clone()
    if "__ndarray__" in value:
        array = np.frombuffer(base64.b64decode(value["__ndarray__"]), dtype=value["dtype"])
        array = array.reshape(value["shape"]).copy()
        return array[()] if value.get("scalar") else array
    return {k: decode_state(v) for k, v in value.items()}
