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

import contextlib
import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch

from hookloop import loading
from hookloop.checkpoint import CHECKPOINTS_DIR, MODEL_FILE
from hookloop.checkpoint.atomic import replace_file
from hookloop.engine import Engine
from hookloop.errors import ConfigError
from hookloop.lm.config import write_config
from hookloop.lm.datasets import datasets, tokenizer_file, train_dataset, val_dataset
from hookloop.lm.device import resolve_device
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
    "launched",
    "load_trained",
    "new_run_dir",
    "new_run_dir_path",
    "resolve_device",
    "set_threads",
    "train_dataset",
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
    training = config["training"]
    set_threads(training["threads"])
    directory = data_dir(config)
    meta = read_meta(directory)
    tokenizer = load_tokenizer(tokenizer_file(config, directory))
    torch.manual_seed(training["seed"])
    model = build_model(config, tokenizer.vocab_size)
    if init_weights and config["model"]["init_from"]:
        from hookloop.lm.hf import load_hf_weights

        load_hf_weights(model, config["model"]["init_from"])
        log.info("model_imported", init_from=config["model"]["init_from"])
    optimizer = build_adamw(model, **config["optimizer"])
    train, val, extra = datasets(config, directory, meta, model.vocab_size)
    plugins = [*loading.plugins_from_config(config["plugins"]), *extra]
    run_path = Path(run_dir) if run_dir is not None else None
    engine = Engine(
        model,
        optimizer,
        train,
        val_data=val,
        plugins=plugins,
        accumulate=training["accumulate"],
        device=resolve_device(training["device"]),
        precision=training["precision"],
        compile=training["compile"],
        run_dir=run_path,
        config=config,
        strategy=config["distributed"]["strategy"],
        reshard_after_forward=config["distributed"]["reshard_after_forward"],
    )
    if run_path is not None and engine.is_main_process:
        # Atomic and only when changed: under torchrun the other ranks may be reading them.
        write_config(config, run_path / "config.toml")
        vocabulary = tokenizer_file(config, directory).read_bytes()
        replace_file(run_path / "tokenizer.json", vocabulary, unless_equal=True)
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
    _check_model_fits(m, vocab)
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


def _check_model_fits(m: dict[str, Any], vocab: int) -> None:
    """Refuse a model whose weights, gradients and AdamW state (16 bytes per parameter)
    could not fit in this machine's memory, before trying to allocate it."""
    d, layers = m["d_model"], m["n_layers"]
    params = (vocab + m["max_seq_len"]) * d + layers * (4 * d * d + 2 * d * m["d_ff"])
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not knowable here: let allocation decide
        return
    if params * 16 > memory:
        raise ConfigError(
            f"the configured model has about {params:,} parameters, which need "
            f"{params * 16 / 2**30:,.0f} GiB to train; this machine has "
            f"{memory / 2**30:.0f} GiB: lower model.d_model, model.n_layers or model.d_ff"
        )


def data_dir(config: dict[str, Any]) -> Path:
    """The prepared data directory of a config: `data.path`, the first of `data.sources`,
    or the default corpus.

    A `data.path` naming raw text (a file, or a directory of text files that is not a
    prepared directory) is prepared once into a cache (see `hookloop.lm.corpus.prepared_text`).
    """
    from hookloop.lm.corpus import default_corpus, is_raw_text, prepared_text

    if config["data"]["path"]:
        path = Path(config["data"]["path"])
        return prepared_text(path) if is_raw_text(path) else path
    if config["data"]["sources"]:
        return Path(config["data"]["sources"][0]["path"])
    return default_corpus()


def launched(config: dict[str, Any]) -> contextlib.AbstractContextManager[Any]:
    """The process group of a torchrun launch for a command, from the `[distributed]`
    section (see `hookloop.distributed.process_group`); yields None in a single process."""
    from hookloop.distributed import process_group

    dist_cfg = config["distributed"]
    return process_group(
        backend=dist_cfg["backend"],
        strategy=dist_cfg["strategy"],
        device=config["training"]["device"],
    )


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
    """A new `base/<UTC timestamp>/` directory (suffixed `-2`, `-3` on clashes), created."""
    path = new_run_dir_path(base)
    path.mkdir(parents=True)
    return path


def new_run_dir_path(base: str | Path = "runs") -> Path:
    """The path `new_run_dir` would create: `base/<UTC timestamp>/`, not yet existing."""
    base = Path(base)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    path, n = base / stamp, 1
    while path.exists():
        n += 1
        path = base / f"{stamp}-{n}"
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
                f"run {run_dir} has no checkpoint that verifies in {checkpoints} (none yet, or "
                "all corrupt: see the warnings above); train longer, or pass --checkpoint"
            )
        return found
    path = Path(checkpoint) if Path(checkpoint).is_dir() else checkpoints / checkpoint
    if not path.is_dir():
        from hookloop.checkpoint import list_checkpoints

        names = [p.name for p in list_checkpoints(checkpoints)]
        raise CheckpointError(
            f"run {run_dir} has no checkpoint {checkpoint}; "
            + (f"it has: {', '.join(names)}" if names else "it has none yet")
        )
    if not (path / MODEL_FILE).is_file():
        raise CheckpointError(f"checkpoint {path} has no {MODEL_FILE}")
    return path


def load_trained(
    run_dir: str | Path, checkpoint: str | None = None
) -> tuple[TinyTransformerLM, Tokenizer, dict[str, Any], Path]:
    """The model of a run with a checkpoint's weights, its tokenizer and config.

    The shape comes from `run_dir/config.toml`, the vocabulary from `run_dir/tokenizer.json`,
    the weights from `model.safetensors` of the checkpoint (see `checkpoint_dir`), verified
    against the checksums of its `state.json` like every checkpoint read. Nothing is
    unpickled.

    Returns:
        `(model, tokenizer, config, checkpoint_path)`, the model in eval mode on the CPU.

    Raises:
        CheckpointError: the run or checkpoint is missing, or the weights do not fit.
    """
    from hookloop.checkpoint import read_model_state
    from hookloop.errors import CheckpointError
    from hookloop.lm.config import load_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.toml)")
    config = load_config(run_dir / "config.toml")
    tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    path = checkpoint_dir(run_dir, checkpoint)
    _, weights = read_model_state(path, allow_bare=True)  # verified, as a resume is
    model = build_model(config, tokenizer.vocab_size)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path / MODEL_FILE} does not fit the model of {run_dir / 'config.toml'}: {first}"
        ) from None
    model.eval()
    return model, tokenizer, config, path
