"""The config schema: every section and key of a run's TOML, with default, type and range.

`hookloop.lm.config` loads, merges and validates a config against this table; the guide's
configuration page lists the same keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_WARMUP_STEPS",
    "INT_LIMITS",
    "MAX_INT",
    "PLUGIN_DEFAULTS",
    "SCHEMA",
    "SECTIONS",
    "Key",
]


@dataclass(frozen=True, slots=True)
class Key:
    """One config key: its default, its type, the allowed range and what it means."""

    default: Any
    type: str  # "int", "float", "bool", "str", "floats2" (a pair of floats), "sources"
    help: str
    check: Callable[[Any], bool] | None = None
    allowed: str = ""  # the range or choices, as the error and the docs say it


def _between(lo: float, hi: float, *, hi_open: bool = False) -> Callable[[Any], bool]:
    return lambda v: lo <= v < hi if hi_open else lo <= v <= hi


_POS = (lambda v: v >= 1, ">= 1")
_NONNEG = (lambda v: v >= 0, ">= 0")


def _key(
    default: Any, type_: str, help_: str, rule: tuple[Callable[[Any], bool], str] | None = None
) -> Key:
    return Key(default, type_, help_, *(rule or (None, "")))


SCHEMA: dict[str, dict[str, Key]] = {
    "data": {
        "path": _key(
            "",
            "str",
            "A directory written by `hookloop prepare`; empty = the embedded "
            "default corpus (the Python standard library's sources, char-level).",
        ),
        "sources": _key(
            [],
            "sources",
            'Several prepared directories mixed by weight, `[{path = "DIR", weight = 0.7, '
            'name = "..."}, ...]` (sharing one tokenizer; instead of `path`; random '
            "sampling); each reports `val_loss/<name>`.",
        ),
        "seq_len": _key(64, "int", "Tokens per training window (the context length T).", _POS),
        "batch_size": _key(
            32, "int", "Windows per micro-batch on each rank (torchrun: times world size).", _POS
        ),
        "sampling": _key(
            "random",
            "str",
            "`random`: windows at random offsets (nanoGPT); "
            "`sequential`: the (N-1)//seq_len non-overlapping windows.",
            (lambda v: v in ("random", "sequential"), "one of random, sequential"),
        ),
        "shuffle": _key(
            True,
            "bool",
            "Sequential sampling only: visit the windows in a "
            "new seeded order each epoch (false: in file order).",
        ),
        "batches_per_epoch": _key(
            0,
            "int",
            "Micro-batches per epoch; 0 = as many as "
            "sequential windows fill, (N-1)//seq_len//(batch_size*world_size).",
            _NONNEG,
        ),
        "val_batches": _key(
            0, "int", "Validation batches per evaluation; 0 = the whole validation split.", _NONNEG
        ),
    },
    "model": {
        "vocab_size": _key(
            0,
            "int",
            "Vocabulary size; 0 = the tokenizer's. A larger value "
            "leaves unused rows; a smaller one is an error.",
            _NONNEG,
        ),
        "d_model": _key(128, "int", "Width of the residual stream.", _POS),
        "n_heads": _key(4, "int", "Attention heads; must divide d_model.", _POS),
        "n_layers": _key(4, "int", "Transformer blocks.", _POS),
        "d_ff": _key(512, "int", "Hidden width of each block's MLP.", _POS),
        "max_seq_len": _key(
            64,
            "int",
            "Learned positions; the longest context the model can read (generation crops to it).",
            _POS,
        ),
        "dropout": _key(
            0.0,
            "float",
            "Dropout on embeddings, attention and residual branches.",
            (_between(0.0, 1.0, hi_open=True), "in [0, 1)"),
        ),
        "bias": _key(
            True,
            "bool",
            "Biases in the linear layers and LayerNorms (false: none, as nanoGPT's `bias=False`).",
        ),
        "activation": _key(
            "gelu",
            "str",
            "The MLP's activation: `gelu` (exact) or `gelu_tanh` (GPT-2's tanh approximation).",
            (lambda v: v in ("gelu", "gelu_tanh"), "one of gelu, gelu_tanh"),
        ),
        "init_from": _key(
            "",
            "str",
            "Start from existing weights: `hf:PATH`, a local GPT-2-format directory "
            "(`save_pretrained`); its shape replaces this section's. Empty = random init.",
            (lambda v: v == "" or v.startswith("hf:"), "empty or hf:PATH"),
        ),
    },
    "optimizer": {
        "lr": _key(
            2e-3,
            "float",
            "Peak learning rate (the schedule plugin warms up to it and decays from it).",
            (lambda v: v > 0, "> 0"),
        ),
        "betas": _key(
            [0.9, 0.95],
            "floats2",
            "AdamW's (beta1, beta2).",
            (lambda v: all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
        ),
        "eps": _key(1e-8, "float", "AdamW's epsilon.", (lambda v: v > 0, "> 0")),
        "fused": _key(
            True,
            "bool",
            "Torch's fused AdamW kernel (CPU and CUDA): one kernel for every parameter, "
            "and the guards check each step with no host sync. false: torch's default "
            "(foreach).",
        ),
        "weight_decay": _key(
            0.1,
            "float",
            "Decoupled weight decay, applied to weight matrices "
            "only (not biases, norms or embeddings).",
            _NONNEG,
        ),
    },
    "training": {
        "max_steps": _key(
            800,
            "int",
            "Optimizer steps to train; 0 = no step limit (then `epochs` must be set).",
            _NONNEG,
        ),
        "epochs": _key(0, "int", "Passes over the training data; 0 = no epoch limit.", _NONNEG),
        "accumulate": _key(1, "int", "Micro-batches per optimizer step.", _POS),
        "device": _key(
            "auto",
            "str",
            "`auto` (cuda when available, else cpu), `cpu`, `cuda`, `cuda:1`, `mps`, ...",
        ),
        "precision": _key(
            "fp32",
            "str",
            "`fp32`, `bf16` (autocast) or `fp16` (autocast + GradScaler).",
            (lambda v: v in ("fp32", "bf16", "fp16"), "one of fp32, bf16, fp16"),
        ),
        "compile": _key(False, "bool", "Run the forward through `torch.compile`."),
        "seed": _key(1337, "int", "Seed of the model init and of the data order.", _NONNEG),
        "threads": _key(
            0,
            "int",
            "CPU threads for torch; 0 = automatic (1 on hosts with "
            "2 or fewer cores, where a second thread slows training down).",
            _NONNEG,
        ),
    },
    "distributed": {
        "strategy": _key(
            "ddp",
            "str",
            "Under torchrun: `ddp` replicates the model on every rank and all-reduces the "
            "gradients; `fsdp` shards parameters, gradients and optimizer state (FSDP2).",
            (lambda v: v in ("ddp", "fsdp"), "one of ddp, fsdp"),
        ),
        "backend": _key(
            "auto",
            "str",
            "Process-group backend: `auto` (nccl on CUDA, gloo on CPU), `nccl` or `gloo`.",
            (lambda v: v in ("auto", "nccl", "gloo"), "one of auto, nccl, gloo"),
        ),
        "reshard_after_forward": _key(
            True,
            "bool",
            "FSDP only: free the gathered parameters after the forward and gather them again "
            "for the backward (less memory, one more all-gather per block).",
        ),
    },
}
"""Every section and key with its default, type, allowed range and meaning."""

PLUGIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "eval": {"every": 200, "max_batches": 20},
}
"""Plugin options the recipe sets by default (each plugin documents its own defaults)."""
DEFAULT_WARMUP_STEPS = 100
"""`plugins.schedule.warmup_steps` when not given: this, or a tenth of the run if shorter."""

MAX_INT = 2**31 - 1
"""The largest value of an integer key (a size, a count of steps), unless `INT_LIMITS` says."""
INT_LIMITS = {"training.seed": 2**63 - 1}
"""Integer keys with another upper bound than `MAX_INT`."""

SECTIONS = (*SCHEMA, "plugins")
_TYPE_NAMES = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "floats2": "a list of two numbers",
    "sources": "a list of {path, weight} tables",
}
