"""Training data that keeps its own position: saved in checkpoints, restored on resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from structlog.testing import capture_logs

from hookloop import Engine
from hookloop.checkpoint import load_checkpoint, save_checkpoint
from hookloop.checkpoint.datastate import decode_state, encode_state
from hookloop.errors import CheckpointError

WIDTH, ITEMS, BATCH = 8, 44, 4  # 11 batches per epoch


class NoisyDataset(torch.utils.data.Dataset):
    """A user Dataset with random augmentation drawn from the item's index (what a Dataset
    read by worker processes needs for exact resumes: torchdata restores the order, not the
    workers' global RNG), read in a shuffled order the resume must restore."""

    def __len__(self) -> int:
        return ITEMS

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn(WIDTH, generator=torch.Generator().manual_seed(i))
        x = torch.full((WIDTH,), float(i)) / ITEMS + 0.1 * noise
        return x, torch.sin(x * 3)


def engine_over(data, seen: list | None = None) -> Engine:
    """An engine over `data` that appends every training input batch to `seen`."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(WIDTH, 16), torch.nn.Tanh(), torch.nn.Linear(16, WIDTH)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def loss_fn(model, batch):
        x, y = batch
        if seen is not None:
            seen.append(x.clone())
        return torch.nn.functional.mse_loss(model(x), y)

    return Engine(model, optimizer, data, loss_fn=loss_fn)


def stateful_loader(seed: int):
    from torchdata.stateful_dataloader import StatefulDataLoader

    return StatefulDataLoader(
        NoisyDataset(),
        batch_size=BATCH,
        shuffle=True,
        num_workers=2,
        generator=torch.Generator().manual_seed(seed),
    )


@pytest.mark.parametrize("stop", [5, 11, 15])  # mid-epoch, at the epoch's end, in epoch two
def test_a_stateful_dataloader_resumes_where_it_stopped(tmp_path, stop):
    pytest.importorskip("torchdata")
    total = 26
    straight: list = []
    whole = engine_over(stateful_loader(seed=1), straight)
    whole.fit(max_steps=total)

    seen: list = []
    engine = engine_over(stateful_loader(seed=1), seen)
    engine.fit(max_steps=stop)
    save_checkpoint(engine, tmp_path / "ckpt")
    resumed = engine_over(stateful_loader(seed=99), seen)  # another order unless restored
    state = load_checkpoint(resumed, tmp_path / "ckpt")
    assert state["data"]["resumable"] and state["data"]["state"] is not None
    resumed.fit(max_steps=total)

    assert len(seen) == len(straight) == total
    for a, b in zip(seen, straight, strict=True):
        assert torch.equal(a, b)
    for p, q in zip(resumed.model.parameters(), whole.model.parameters(), strict=True):
        assert torch.equal(p, q)  # bitwise the same weights as the straight run


def test_plain_iterables_are_replayed_with_a_warning(tmp_path):
    batches = [(torch.randn(BATCH, WIDTH), torch.randn(BATCH, WIDTH)) for _ in range(6)]
    engine = engine_over(batches)
    engine.fit(max_steps=4)
    save_checkpoint(engine, tmp_path / "ckpt")
    seen: list = []
    resumed = engine_over(batches, seen)
    with capture_logs() as logs:
        load_checkpoint(resumed, tmp_path / "ckpt")
    warning = next(e for e in logs if e["event"] == "data_replay")
    assert warning["batches"] == 4 and "re-reads and drops the 4 batches" in warning["detail"]
    resumed.fit(max_steps=6)
    assert len(seen) == 2 and all(
        torch.equal(b, x) for b, (x, _) in zip(seen, batches[4:], strict=True)
    )


def test_stateful_data_without_a_saved_state_mid_epoch_is_refused(tmp_path):
    pytest.importorskip("torchdata")
    batches = [(torch.randn(BATCH, WIDTH), torch.randn(BATCH, WIDTH)) for _ in range(6)]
    engine = engine_over(batches)
    engine.fit(max_steps=3)
    save_checkpoint(engine, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="holds no state for the training data"):
        load_checkpoint(engine_over(stateful_loader(seed=1)), tmp_path / "ckpt")


def test_states_round_trip_through_json():
    state = {
        "generator": torch.Generator().manual_seed(3).get_state(),
        "floats": torch.arange(6, dtype=torch.float64).reshape(2, 3),
        "scalar_tensor": torch.tensor(2.5, dtype=torch.bfloat16),
        "workers": {0: {"seen": 3}, 1: None},
        "pair": (1, "a"),
        "raw": b"\x00\xff",
        "array": np.arange(4, dtype=np.int32),
        "np_scalar": np.float32(1.5),
        "nested": [1, 2.0, True, None, "s"],
    }
    import json

    back = decode_state(json.loads(json.dumps(encode_state(state))))
    assert torch.equal(back["generator"], state["generator"])
    assert torch.equal(back["floats"], state["floats"]) and back["floats"].dtype == torch.float64
    assert torch.equal(back["scalar_tensor"], state["scalar_tensor"])
    assert back["workers"] == {0: {"seen": 3}, 1: None} and back["pair"] == (1, "a")
    assert back["raw"] == b"\x00\xff" and back["nested"] == state["nested"]
    assert np.array_equal(back["array"], state["array"]) and back["array"].dtype == np.int32
    assert back["np_scalar"] == np.float32(1.5) and isinstance(back["np_scalar"], np.float32)
    with pytest.raises(CheckpointError, match=r"state\.bad is a set"):
        encode_state({"bad": {1, 2}})
