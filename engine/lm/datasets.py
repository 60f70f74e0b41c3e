"""The datasets a config means: the training and validation splits of a prepared directory,
or a mixture of several (`data.sources`), each rank reading its slice of every global batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hookloop.distributed import rank_and_world
from hookloop.lm.data import TokenDataset
from hookloop.lm.prepare import read_meta

__all__ = ["datasets", "tokenizer_file", "train_dataset", "val_dataset"]


def train_dataset(
    config: dict[str, Any], directory: Path, vocab_size: int, meta: dict[str, Any]
) -> TokenDataset:
    """The training split of a prepared directory, sampled as `[data]` says."""
    data_cfg = config["data"]
    return _split(
        config,
        directory / "train.bin",
        meta,
        vocab_size,
        sampling=data_cfg["sampling"],
        shuffle=data_cfg["shuffle"],
        batches_per_epoch=data_cfg["batches_per_epoch"],
        seed=config["training"]["seed"],
    )


def _split(
    config: dict[str, Any], path: Path, meta: dict[str, Any], vocab_size: int, **sampling: Any
) -> TokenDataset:
    data_cfg = config["data"]
    rank, world = rank_and_world()  # each rank reads its slice of every global batch
    return TokenDataset(
        path,
        seq_len=data_cfg["seq_len"],
        batch_size=data_cfg["batch_size"],
        dtype=meta["dtype"],
        vocab_size=vocab_size,
        rank=rank,
        world_size=world,
        **sampling,
    )


def datasets(
    config: dict[str, Any], directory: Path, meta: dict[str, Any], vocab_size: int
) -> tuple[Any, Any, list[object]]:
    """Training data, validation data and extra plugins: one directory, or a mixture of
    `data.sources` with a `SourceLosses` plugin reporting each source's validation loss."""
    sources = config["data"]["sources"]
    if not sources:
        train = train_dataset(config, directory, vocab_size, meta)
        return train, val_dataset(config, directory, vocab_size, meta), []
    from hookloop.lm.mixture import MixtureDataset, RoundRobin, SourceLosses

    trains, vals, weights = {}, {}, {}
    for entry in sources:
        path, name = Path(entry["path"]), entry["name"]
        source_meta = read_meta(path)
        trains[name] = train_dataset(config, path, vocab_size, source_meta)
        vals[name] = val_dataset(config, path, vocab_size, source_meta)
        weights[name] = entry["weight"]
    train = MixtureDataset(
        trains,
        weights,
        batches_per_epoch=config["data"]["batches_per_epoch"],
        seed=config["training"]["seed"],
    )
    losses = SourceLosses(vals, config["data"]["val_batches"] or None)
    return train, RoundRobin(vals), [losses]


def tokenizer_file(config: dict[str, Any], directory: Path) -> Path:
    """The data's `tokenizer.json` (for `data.sources`, the one they all share)."""
    sources = config["data"]["sources"]
    if not sources:
        return directory / "tokenizer.json"
    from hookloop.lm.mixture import shared_tokenizer

    return shared_tokenizer([Path(entry["path"]) for entry in sources])


def val_dataset(
    config: dict[str, Any], directory: Path, vocab_size: int, meta: dict[str, Any] | None = None
) -> TokenDataset:
    """The validation split: every sequential window in file order (at most
    `data.val_batches` batches), the last batch kept even when short. Under several ranks
    each rank reads its slice of every batch, so the ranks share the evaluation."""
    return _split(
        config,
        directory / "val.bin",
        meta or read_meta(directory),
        vocab_size,
        sampling="sequential",
        shuffle=False,
        batches_per_epoch=config["data"]["val_batches"],
        drop_last=False,
    )
