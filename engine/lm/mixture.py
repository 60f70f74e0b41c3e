"""Several prepared corpora in one run, mixed by weight (`data.sources`).

    [data]
    sources = [
        {path = "data/stories", weight = 0.7},
        {path = "data/code", weight = 0.3, name = "code"},
    ]

Every row of every batch first draws its source with probability proportional to the
weights, then a window at a uniformly random offset of that source's `train.bin`. The draws
of batch `b` of epoch `e` come from a generator seeded by `(seed, e * batches_per_epoch + b)`
alone, so a batch is a pure function of the seed and the step: a resumed run continues with
exactly the batches an uninterrupted one would have read, and nothing is replayed.

Under several processes (`world_size > 1`) `batch_size` is per rank, as for one prepared
directory (`hookloop.lm.data`): each batch is drawn as one global batch of
`world_size * batch_size` rows, exactly as one process with that batch size draws it, and
rank `r` reads rows `[r*B, (r+1)*B)` of it. So 2 ranks with batch B read exactly the windows
1 rank with batch 2B reads, batch for batch, and an epoch (all sources' windows over the
global batch) has the same length on both.

All sources must share one tokenizer (the same `tokenizer.json`). Validation reads each
source's `val.bin`; `SourceLosses` reports each source's loss as `val_loss/<name>`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hookloop import hookimpl
from hookloop.errors import ConfigError, DataError
from hookloop.lm.data import TokenDataset

if TYPE_CHECKING:
    from hookloop import Engine

__all__ = ["MixtureDataset", "RoundRobin", "SourceLosses", "check_sources", "step_generator"]

Batch = tuple[torch.Tensor, torch.Tensor]


def step_generator(seed: int, step: int) -> torch.Generator:
    """A torch.Generator determined by `(seed, step)` alone."""
    state = np.random.SeedSequence([seed, 0x6D6978, step]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


class MixtureDataset:
    """Batches `(inputs, targets)` whose rows come from several token files by weight.

    Args:
        sources: Name to a `TokenDataset` of each source's training split; they share
            `seq_len`, `batch_size` (per rank), `rank` and `world_size`, which the mixture
            takes from them.
        weights: Name to its weight (any positive numbers; they are normalised).
        batches_per_epoch: Batches per epoch; 0 = all sources' windows' worth of global
            batches, `windows // (batch_size * world_size)`.
        seed: With the step, determines every batch.

    Raises:
        ConfigError: a source without a weight, a weight that is not > 0, or sources that
            disagree on `seq_len`, `batch_size`, `rank` or `world_size`.
    """

    def __init__(
        self,
        sources: Mapping[str, TokenDataset],
        weights: Mapping[str, float],
        *,
        batches_per_epoch: int = 0,
        seed: int = 0,
    ) -> None:
        if not sources or set(sources) != set(weights):
            raise ConfigError("data.sources: every source needs a weight (and there must be one)")
        self.names = list(sources)
        self.sources = dict(sources)
        w = torch.tensor([float(weights[n]) for n in self.names], dtype=torch.float64)
        if not bool((w > 0).all()) or not math.isfinite(float(w.sum())):
            raise ConfigError(
                "data.sources: every weight must be a finite number > 0, and their sum finite"
            )
        self.probabilities = w / w.sum()
        first = next(iter(self.sources.values()))
        shape = (first.seq_len, first.batch_size, first.rank, first.world_size)
        if any((d.seq_len, d.batch_size, d.rank, d.world_size) != shape for d in sources.values()):
            raise ConfigError(
                "data.sources: every source must be read with one seq_len, batch_size, rank "
                "and world_size"
            )
        self.batch_size, self.seq_len, self.seed = first.batch_size, first.seq_len, seed
        self.rank, self.world_size = first.rank, first.world_size
        self.global_batch_size = first.global_batch_size
        """Rows in one batch over every rank together."""
        windows = sum(ds.num_windows for ds in self.sources.values())
        self.batches_per_epoch = batches_per_epoch or max(1, windows // self.global_batch_size)
        self.num_tokens = sum(ds.num_tokens for ds in self.sources.values())

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[Batch]:
        """The batches of epoch 0."""
        return self.iter_epoch(0, 0)

    def iter_epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of `epoch` from batch `start` on; batch `b` depends on nothing but
        `(seed, epoch * batches_per_epoch + b)`."""
        for b in range(start, self.batches_per_epoch):
            yield self.batch(epoch * self.batches_per_epoch + b)

    def choose(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The source index and the uniform draw in [0, 1) of every row of global batch
        `step` (`global_batch_size` rows, the same on every rank)."""
        g = step_generator(self.seed, step)
        n = self.global_batch_size
        rows = torch.multinomial(self.probabilities, n, replacement=True, generator=g)
        return rows, torch.rand(n, generator=g, dtype=torch.float64)

    def batch(self, step: int) -> Batch:
        """This rank's rows of batch number `step` (counted across epochs)."""
        rows, uniform = self.choose(step)
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        rows, uniform = rows[mine], uniform[mine]
        inputs = torch.empty(self.batch_size, self.seq_len, dtype=torch.int64)
        targets = torch.empty_like(inputs)
        for i, name in enumerate(self.names):
            picked = torch.nonzero(rows == i).flatten()
            if picked.numel():
                ds = self.sources[name]
                high = ds.num_tokens - ds.seq_len  # offsets 0 .. N-T-1 leave room for targets
                offsets = (uniform[picked] * high).long().clamp_(max=high - 1)
                x, y = ds.windows(offsets.numpy())
                inputs[picked], targets[picked] = x, y
        return inputs, targets


class RoundRobin:
    """Validation batches of several sources, taken in turn (one of each, then the next of
    each), so a cap on the number of batches still covers every source."""

    def __init__(self, sources: Mapping[str, TokenDataset]) -> None:
        self.sources = dict(sources)

    def __iter__(self) -> Iterator[Batch]:
        """Batch 0 of every source, then batch 1 of every source, and so on."""
        iterators = [iter(ds) for ds in self.sources.values()]
        while iterators:
            for it in list(iterators):
                batch = next(it, None)
                if batch is None:
                    iterators.remove(it)
                else:
                    yield batch

    def __len__(self) -> int:
        """All sources' batches."""
        return sum(len(ds) for ds in self.sources.values())


class SourceLosses:
    """Adds `val_loss/<name>` for every source to each evaluation's metrics.

    Each source's validation split is measured on its own (at most `max_batches` batches,
    None = all), after the engine measured the mixture, so an evaluation costs about twice
    a single corpus's. It runs first among `on_eval_end` implementations, so loggers and
    `early_stop` see the per-source keys.
    """

    name = "source_losses"

    def __init__(self, sources: Mapping[str, TokenDataset], max_batches: int | None) -> None:
        self.sources, self.max_batches = dict(sources), max_batches

    @hookimpl(tryfirst=True)  # before the loggers read the metrics
    def on_eval_end(self, engine: Engine, metrics: dict[str, float]) -> None:
        for name, data in self.sources.items():
            metrics[f"val_loss/{name}"] = engine.validation_loss(data, self.max_batches)


def check_sources(value: Any, where: str = "") -> list[dict[str, Any]]:
    """`data.sources` checked: a list of `{path, weight[, name]}` tables, names unique.

    Returns:
        The list with every `name` filled in (default: the directory's name).

    Weights are checked here, when the config is read and before anything is written, for
    everything `MixtureDataset` will do with them: each a finite number > 0, and their sum
    finite (it normalises them), so the first batch can never meet an infinite or NaN
    probability.

    Raises:
        ConfigError: not a list of such tables, a weight that is not a finite positive
            number, weights whose sum overflows, an unknown key, or two sources with one name.
    """
    if not isinstance(value, list):
        raise ConfigError(f"data.sources must be a list of {{path, weight}} tables {where}")
    checked, names = [], set()
    for i, entry in enumerate(value):
        at = f"data.sources[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f'{at} must be a table like {{path = "DIR", weight = 1.0}} {where}')
        unknown = set(entry) - {"path", "weight", "name"}
        if unknown:
            raise ConfigError(
                f"{at} has unknown key(s) {sorted(unknown)}; keys: path, weight, name"
            )
        path, weight = entry.get("path"), entry.get("weight", 1.0)
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{at}.path must be a prepared data directory {where}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ConfigError(f"{at}.weight must be a number > 0, got {weight!r} {where}")
        try:
            weight = float(weight)
        except OverflowError:  # a Python int beyond any float
            weight = math.inf
        if not math.isfinite(weight) or not weight > 0:
            raise ConfigError(
                f"{at}.weight must be a finite number > 0 (only the ratios of the weights "
                f"matter), got {entry.get('weight')!r} {where}"
            )
        name = entry.get("name", Path(path).name)
        if not isinstance(name, str) or not name or name in names:
            raise ConfigError(f"{at}.name {name!r} must be a unique non-empty string {where}")
        names.add(name)
        checked.append({"path": path, "weight": weight, "name": name})
    if checked and not math.isfinite(sum(e["weight"] for e in checked)):
        raise ConfigError(
            f"data.sources weights sum to more than the largest float "
            f"({', '.join(repr(e['weight']) for e in checked)}); scale them down, only their "
            f"ratios matter {where}"
        )
    return checked


def shared_tokenizer(directories: Sequence[Path]) -> Path:
    """The `tokenizer.json` every source shares.

    Raises:
        DataError: the sources were prepared with different tokenizers.
    """
    first = directories[0] / "tokenizer.json"
    for directory in directories[1:]:
        if (directory / "tokenizer.json").read_bytes() != first.read_bytes():
            raise DataError(
                f"data.sources {directories[0]} and {directory} have different tokenizers; "
                "prepare every source with one tokenizer (e.g. --tokenizer byte)"
            )
    return first
