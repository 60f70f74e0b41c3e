"""Build a complete language-model run from a resolved config.

    config = load_config("run.toml", overrides)
    run = build_run(config, new_run_dir())
    run.fit()
    print(run.engine.evaluate())

`build_run` resolves the data (a prepared directory, or the embedded default corpus), loads
its tokenizer, builds `TinyTransformerLM`, AdamW with decay on matrices only, the train and
validation datasets, the configured plugins, and the `Engine`. With a run directory it
writes the resolved `config.toml` and a copy of `tokenizer.json` there, so `hookloop
sample` and `hookloop eval` need nothing but the run directory.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch

from hookloop import loading
from hookloop.checkpoint import CHECKPOINTS_DIR, MODEL_FILE
from hookloop.engine import Engine
from hookloop.errors import ConfigError
from hookloop.lm.config import write_config
from hookloop.lm.data import TokenDataset
from hookloop.lm.model import TinyTransformerLM
from hookloop.lm.optim import build_adamw
from hookloop.lm.prepare import read_meta
from hookloop.lm.tokenizers import Tokenizer, load_tokenizer
from hookloop.state import State

__all__ = [
    "Run",
    "build_model",
    "build_run",
    "checkpoint_dir",
    "data_dir",
    "latest_run_dir",
    "load_trained",
    "new_run_dir",
    "resolve_device",
    "set_threads",
    "val_dataset",
]

log = structlog.get_logger("hookloop")


@dataclass
class Run:
    """Everything a configured training run needs, ready to `fit()`."""

    engine: Engine
    """The engine with model, optimizer, data and the configured plugins."""
    config: dict[str, Any]
    """The resolved config."""
    tokenizer: Tokenizer
    """The tokenizer the data was prepared with."""
    data_dir: Path
    """The prepared data directory."""
    run_dir: Path | None
    """Where config, tokenizer, metrics and checkpoints go (None: nothing is written)."""
    max_steps: int | None
    """`training.max_steps`, None when 0 (no step limit)."""
    epochs: int | None
    """`training.epochs`, None when 0 (no epoch limit)."""

    def fit(self) -> State:
        """Train to the configured limits; returns the final state."""
        return self.engine.fit(max_steps=self.max_steps, epochs=self.epochs)


def build_run(
    config: dict[str, Any], run_dir: str | Path | None = None, *, init_weights: bool = True
) -> Run:
    """Build the run a resolved config describes (see `hookloop.lm.config.load_config`).

    Args:
        config: The resolved config.
        run_dir: The run directory; created, and given `config.toml` and `tokenizer.json`.
        init_weights: Load `model.init_from`'s weights (False when a checkpoint will
            replace them anyway, on resume).

    Raises:
        ConfigError: the data and the model disagree (e.g. a too small model.vocab_size).
        DataError: the data directory is missing or malformed.
        PluginError: a plugin is unknown or misconfigured.
    """
    data_cfg, training = config["data"], config["training"]
    set_threads(training["threads"])
    directory = data_dir(config)
    meta = read_meta(directory)
    tokenizer = load_tokenizer(directory / "tokenizer.json")
    torch.manual_seed(training["seed"])
    model = build_model(config, tokenizer.vocab_size)
    if init_weights and config["model"]["init_from"]:
        from hookloop.lm.hf import load_hf_weights

        load_hf_weights(model, config["model"]["init_from"])
        log.info("model_imported", init_from=config["model"]["init_from"])
    optimizer = build_adamw(model, **config["optimizer"])
    train = TokenDataset(
        directory / "train.bin",
        seq_len=data_cfg["seq_len"],
        batch_size=data_cfg["batch_size"],
        dtype=meta["dtype"],
        vocab_size=model.vocab_size,
        sampling=data_cfg["sampling"],
        shuffle=data_cfg["shuffle"],
        batches_per_epoch=data_cfg["batches_per_epoch"],
        seed=training["seed"],
    )
    plugins = loading.plugins_from_config(config["plugins"])
    run_path = Path(run_dir) if run_dir is not None else None
    engine = Engine(
        model,
        optimizer,
        train,
        val_data=val_dataset(config, directory, model.vocab_size, meta),
        plugins=plugins,
        accumulate=training["accumulate"],
        device=resolve_device(training["device"]),
        precision=training["precision"],
        compile=training["compile"],
        run_dir=run_path,
        config=config,
    )
    if run_path is not None and engine.is_main_process:
        write_config(config, run_path / "config.toml")
        shutil.copyfile(directory / "tokenizer.json", run_path / "tokenizer.json")
    log.info(
        "run_built",
        run_dir=str(run_path),
        data=str(directory),
        parameters=model.num_parameters(),
        vocab_size=model.vocab_size,
        train_tokens=train.num_tokens,
        device=str(engine.device),
    )
    return Run(
        engine=engine,
        config=config,
        tokenizer=tokenizer,
        data_dir=directory,
        run_dir=run_path,
        max_steps=training["max_steps"] or None,
        epochs=training["epochs"] or None,
    )


def build_model(config: dict[str, Any], tokenizer_vocab: int) -> TinyTransformerLM:
    """`TinyTransformerLM` with the `[model]` section's shape.

    Raises:
        ConfigError: model.vocab_size is set but smaller than the tokenizer's vocabulary.
    """
    m = config["model"]
    vocab = m["vocab_size"] or tokenizer_vocab
    if vocab < tokenizer_vocab:
        raise ConfigError(
            f"model.vocab_size ({vocab}) is smaller than the tokenizer's "
            f"vocabulary ({tokenizer_vocab}); set it to 0 to use the tokenizer's"
        )
    return TinyTransformerLM(
        vocab,
        m["d_model"],
        m["n_heads"],
        m["n_layers"],
        m["d_ff"],
        m["max_seq_len"],
        m["dropout"],
        bias=m["bias"],
        activation=m["activation"],
    )


def val_dataset(
    config: dict[str, Any], directory: Path, vocab_size: int, meta: dict[str, Any] | None = None
) -> TokenDataset:
    """The validation split: every sequential window in file order (at most
    `data.val_batches` batches), the last batch kept even when short."""
    data_cfg = config["data"]
    meta = meta or read_meta(directory)
    return TokenDataset(
        directory / "val.bin",
        seq_len=data_cfg["seq_len"],
        batch_size=data_cfg["batch_size"],
        dtype=meta["dtype"],
        vocab_size=vocab_size,
        sampling="sequential",
        shuffle=False,
        batches_per_epoch=data_cfg["val_batches"],
        drop_last=False,
    )


def data_dir(config: dict[str, Any]) -> Path:
    """The prepared data directory of a config: `data.path`, or the default corpus."""
    if config["data"]["path"]:
        return Path(config["data"]["path"])
    from hookloop.lm.corpus import default_corpus

    return default_corpus()


def resolve_device(device: str) -> str:
    """`auto` becomes `cuda` when a GPU is available, else `cpu`; other names pass through."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def set_threads(threads: int) -> int:
    """Set torch's intra-op threads; 0 picks 1 on hosts with <= 2 cores, else torch's default.

    On 2-core hosts a second intra-op thread contends with the main thread (and with
    anything else running) and makes small-model training slower, not faster.
    """
    if threads == 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        if (cores or 1) > 2:
            return torch.get_num_threads()
        threads = 1
    torch.set_num_threads(threads)
    return threads


def new_run_dir(base: str | Path = "runs") -> Path:
    """A new, not yet existing `base/<UTC timestamp>/` path (suffixed `-2`, `-3` on clashes)."""
    base = Path(base)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    path, n = base / stamp, 1
    while path.exists():
        n += 1
        path = base / f"{stamp}-{n}"
    path.mkdir(parents=True)
    return path


def latest_run_dir(base: str | Path = "runs") -> Path | None:
    """The most recently started run under `base` (one holding a config.toml), or None."""
    base = Path(base)
    if not base.is_dir():
        return None
    runs = [p for p in base.iterdir() if (p / "config.toml").is_file()]
    return max(runs, key=lambda p: ((p / "config.toml").stat().st_mtime, p.name), default=None)


def checkpoint_dir(run_dir: str | Path, checkpoint: str | None = None) -> Path:
    """A checkpoint directory of a run: `checkpoint` (a name under run_dir/checkpoints, or
    a path), else the newest one that verifies (the `latest` pointer first).

    Raises:
        CheckpointError: no such checkpoint, or none that verifies.
    """
    from hookloop.checkpoint import latest_valid_checkpoint
    from hookloop.errors import CheckpointError

    checkpoints = Path(run_dir) / CHECKPOINTS_DIR
    if checkpoint is None:
        found = latest_valid_checkpoint(Path(run_dir))
        if found is None:
            raise CheckpointError(
                f"run {run_dir} has no checkpoint yet (nothing valid in "
                f"{checkpoints}); train longer, or pass --checkpoint"
            )
        return found
    path = Path(checkpoint) if Path(checkpoint).is_dir() else checkpoints / checkpoint
    if not (path / MODEL_FILE).is_file():
        raise CheckpointError(f"checkpoint {path} has no {MODEL_FILE}")
    return path


def load_trained(
    run_dir: str | Path, checkpoint: str | None = None
) -> tuple[TinyTransformerLM, Tokenizer, dict[str, Any], Path]:
    """The model of a run with a checkpoint's weights, its tokenizer and config.

    The shape comes from `run_dir/config.toml`, the vocabulary from `run_dir/tokenizer.json`,
    the weights from `model.safetensors` of the checkpoint (see `checkpoint_dir`). Nothing is
    unpickled.

    Returns:
        `(model, tokenizer, config, checkpoint_path)`, the model in eval mode on the CPU.

    Raises:
        CheckpointError: the run or checkpoint is missing, or the weights do not fit.
    """
    from safetensors.torch import load_file

    from hookloop.errors import CheckpointError
    from hookloop.lm.config import load_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.toml)")
    config = load_config(run_dir / "config.toml")
    tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    path = checkpoint_dir(run_dir, checkpoint)
    model = build_model(config, tokenizer.vocab_size)
    try:
        model.load_state_dict(load_file(path / MODEL_FILE))
    except (RuntimeError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path / MODEL_FILE} does not fit the model of {run_dir / 'config.toml'}: {first}"
        ) from exc
    model.eval()
    return model, tokenizer, config, path
