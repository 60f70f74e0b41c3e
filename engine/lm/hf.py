"""Hugging Face GPT-2 format in and out: `hookloop export --format hf` and
`model.init_from = "hf:PATH"`.

`TinyTransformerLM` is GPT-2's architecture (pre-norm blocks, learned positions, fused QKV,
tied output head), so the conversion is a renaming plus a transpose: GPT-2 stores its linear
layers as `Conv1D`, whose weight is `(in, out)` where `nn.Linear`'s is `(out, in)`.

| hookloop                      | GPT-2 (`GPT2LMHeadModel`)                 |
|-------------------------------|-------------------------------------------|
| `tok_emb.weight`              | `transformer.wte.weight` (and `lm_head`)  |
| `pos_emb.weight`              | `transformer.wpe.weight`                  |
| `blocks.N.ln1.*`              | `transformer.h.N.ln_1.*`                  |
| `blocks.N.attn.qkv.weight`    | `transformer.h.N.attn.c_attn.weight` (T)  |
| `blocks.N.attn.proj.weight`   | `transformer.h.N.attn.c_proj.weight` (T)  |
| `blocks.N.ln2.*`              | `transformer.h.N.ln_2.*`                  |
| `blocks.N.mlp.fc.weight`      | `transformer.h.N.mlp.c_fc.weight` (T)     |
| `blocks.N.mlp.proj.weight`    | `transformer.h.N.mlp.c_proj.weight` (T)   |
| `ln_f.*`                      | `transformer.ln_f.*`                      |

Biases keep their names (`.bias`, no transpose); a model trained with `bias = false`
exports zero biases, which compute the same function. `activation = "gelu"` exports as
GPT-2's `activation_function = "gelu"` (exact erf GELU, as hookloop computes it) and
`gelu_tanh` as `gelu_pytorch_tanh`; on import, `gelu_new`, `gelu_fast` and
`gelu_pytorch_tanh` (the tanh approximation under three names) become `gelu_tanh`.

This module reads and writes only safetensors and JSON: nothing is unpickled. It imports
torch only inside the functions that need it, so the config loader can call
`hf_model_options` without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hookloop.checkpoint.atomic import replace_file
from hookloop.errors import CheckpointError, ConfigError
from hookloop.filecheck import field, read_json_object, short

if TYPE_CHECKING:
    import torch

    from hookloop.lm.tokenizers import Tokenizer

__all__ = [
    "HF_PREFIX",
    "export_hf",
    "from_gpt2_state",
    "gpt2_config",
    "hf_model_options",
    "load_hf_weights",
    "to_gpt2_state",
]

HF_PREFIX = "hf:"
_TO_HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
_FROM_HF_ACTIVATION = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
}
_BLOCK = [  # (hookloop name in blocks.N, GPT-2 name in transformer.h.N, transposed)
    ("ln1.weight", "ln_1.weight", False),
    ("ln1.bias", "ln_1.bias", False),
    ("attn.qkv.weight", "attn.c_attn.weight", True),
    ("attn.qkv.bias", "attn.c_attn.bias", False),
    ("attn.proj.weight", "attn.c_proj.weight", True),
    ("attn.proj.bias", "attn.c_proj.bias", False),
    ("ln2.weight", "ln_2.weight", False),
    ("ln2.bias", "ln_2.bias", False),
    ("mlp.fc.weight", "mlp.c_fc.weight", True),
    ("mlp.fc.bias", "mlp.c_fc.bias", False),
    ("mlp.proj.weight", "mlp.c_proj.weight", True),
    ("mlp.proj.bias", "mlp.c_proj.bias", False),
]
_TOP = [
    ("tok_emb.weight", "transformer.wte.weight"),
    ("pos_emb.weight", "transformer.wpe.weight"),
    ("ln_f.weight", "transformer.ln_f.weight"),
    ("ln_f.bias", "transformer.ln_f.bias"),
]
# GPT-2 options whose non-default values change the computation in ways hookloop lacks
_UNSUPPORTED = {
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
}


def gpt2_config(model_config: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """The `config.json` of the GPT-2 model equal to a hookloop `[model]` section."""
    m = model_config
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": vocab_size,
        "n_positions": m["max_seq_len"],
        "n_embd": m["d_model"],
        "n_layer": m["n_layers"],
        "n_head": m["n_heads"],
        "n_inner": m["d_ff"],
        "activation_function": _TO_HF_ACTIVATION[m.get("activation", "gelu")],
        "resid_pdrop": m["dropout"],
        "embd_pdrop": m["dropout"],
        "attn_pdrop": m["dropout"],
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "bos_token_id": None,
        "eos_token_id": None,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }


def to_gpt2_state(state: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """A `TinyTransformerLM` state dict under GPT-2's names and layouts (missing biases of a
    `bias = false` model become zeros)."""
    import torch

    out = {hf: state[ours].contiguous() for ours, hf in _TOP if ours in state}
    d_model = state["tok_emb.weight"].shape[1]
    out.setdefault("transformer.ln_f.bias", torch.zeros(d_model))
    for i in range(n_layers):
        for ours, hf, transpose in _BLOCK:
            key = f"blocks.{i}.{ours}"
            if key in state:
                tensor = state[key].t() if transpose else state[key]
            else:  # a bias of a bias-free model: the matching weight says its size
                weight = state[f"blocks.{i}.{ours.removesuffix('bias')}weight"]
                tensor = torch.zeros(weight.shape[0], dtype=weight.dtype)
            out[f"transformer.h.{i}.{hf}"] = tensor.contiguous()
    return out


def from_gpt2_state(
    hf_state: dict[str, torch.Tensor], n_layers: int, source: str
) -> dict[str, torch.Tensor]:
    """GPT-2 tensors under `TinyTransformerLM`'s names (biases included: GPT-2 has them).

    Raises:
        CheckpointError: a tensor the model needs is missing (naming it and `source`).
    """
    state = {k.removeprefix("model."): v for k, v in hf_state.items()}
    if not any(k.startswith("transformer.") for k in state):  # saved from GPT2Model
        state = {f"transformer.{k}": v for k, v in state.items()}
    pairs = [(ours, hf, False) for ours, hf in _TOP]
    pairs += [
        (f"blocks.{i}.{ours}", f"transformer.h.{i}.{hf}", t)
        for i in range(n_layers)
        for ours, hf, t in _BLOCK
    ]
    out = {}
    for ours, hf, transpose in pairs:
        if hf not in state:
            raise CheckpointError(f"{source} has no tensor {hf}; is it a GPT-2 model?")
        if transpose and state[hf].dim() != 2:
            raise CheckpointError(
                f"{source}: tensor {hf} has shape {list(state[hf].shape)}, not a matrix; "
                "is it a GPT-2 model?"
            )
        out[ours] = (state[hf].t() if transpose else state[hf]).contiguous().float()
    return out


_CONFIG_FIX = "give a directory written by save_pretrained (a GPT-2 model)"
_MAX_SIZE = 2**31 - 1
"""Largest size a GPT-2 `config.json` may give (the model must fit in memory anyway)."""
_SIZES = (  # (GPT-2 key, hookloop [model] key, GPT-2's default)
    ("vocab_size", "vocab_size", 50257),
    ("n_embd", "d_model", 768),
    ("n_head", "n_heads", 12),
    ("n_layer", "n_layers", 12),
    ("n_positions", "max_seq_len", 1024),
)


def _read_hf_config(directory: Path) -> dict[str, Any]:
    """The `config.json` of a GPT-2 directory, every field hookloop reads checked."""
    path = directory / "config.json"
    if not path.is_file():
        raise ConfigError(f"model.init_from: {directory} has no config.json; {_CONFIG_FIX}")
    fix = f"fix it or {_CONFIG_FIX}"
    config = read_json_object(path, ConfigError, fix=fix)
    model_type = config.get("model_type")
    if model_type != "gpt2":
        raise ConfigError(
            f"model.init_from: {path} describes a {short(model_type)} model; "
            "only GPT-2-format models (model_type gpt2) can be imported"
        )
    for key, wanted in _UNSUPPORTED.items():
        if key in config and (type(config[key]) is not bool or config[key] != wanted):
            raise ConfigError(
                f"model.init_from: {path} sets {key} = {short(config[key])}, which hookloop's "
                f"model does not implement (it needs {wanted!r})"
            )
    for key, _, default in _SIZES:
        field(
            config, key, "int", file=path, error=ConfigError, fix=fix, default=default,
            check=lambda v: 1 <= v <= _MAX_SIZE, allowed=f"an integer from 1 to {_MAX_SIZE}",
        )  # fmt: skip
    if config.get("n_inner") is not None:
        field(
            config, "n_inner", "int", file=path, error=ConfigError, fix=fix,
            check=lambda v: 1 <= v <= _MAX_SIZE, allowed=f"null or an integer from 1 to {_MAX_SIZE}",
        )  # fmt: skip
    n_embd, n_head = config.get("n_embd", 768), config.get("n_head", 12)
    if n_embd % n_head:
        raise ConfigError(
            f"{path} is malformed: n_embd ({n_embd}) must be divisible by n_head ({n_head}); {fix}"
        )
    field(
        config, "activation_function", "str", file=path, error=ConfigError, default="gelu_new",
        fix=f"hookloop supports {', '.join(_FROM_HF_ACTIVATION)}",
        check=lambda v: v in _FROM_HF_ACTIVATION, allowed=f"one of {', '.join(_FROM_HF_ACTIVATION)}",
    )  # fmt: skip
    return config


def hf_model_options(init_from: str) -> dict[str, Any]:
    """The `[model]` options of the GPT-2 directory that `init_from = "hf:PATH"` names.

    Every field of `config.json` that is read is checked first (types, ranges, `n_embd`
    divisible by `n_head`), so a malformed file is one line, never a traceback.

    Raises:
        ConfigError: the directory is missing, not GPT-2, uses an unsupported option, or its
            `config.json` is malformed.
    """
    directory = Path(init_from.removeprefix(HF_PREFIX))
    if not directory.is_dir():
        raise ConfigError(
            f"model.init_from: {directory} is not a directory; give hf:PATH to a local "
            "GPT-2-format directory (nothing is downloaded)"
        )
    c = _read_hf_config(directory)
    options = {ours: c.get(key, default) for key, ours, default in _SIZES}
    options["d_ff"] = c.get("n_inner") or 4 * options["d_model"]
    options["activation"] = _FROM_HF_ACTIVATION[c.get("activation_function", "gelu_new")]
    options["bias"] = True
    return options


_INDEX = "model.safetensors.index.json"
_WEIGHTS_FIX = (
    "only safetensors weights are read; re-save the model with "
    "save_pretrained(..., safe_serialization=True)"
)


def _weight_files(directory: Path) -> dict[Path, str | None]:
    """The safetensors files to read: `model.safetensors`, or the shards the index names,
    each with the tensor names the index puts in it (None: no index, any names).

    Raises:
        CheckpointError: the index is malformed (not an object, `weight_map` missing or not
            an object of tensor name -> plain file name) or names a missing shard, or there
            is no safetensors file.
    """
    index = directory / _INDEX
    if not index.is_file():
        single = directory / "model.safetensors"
        if not single.is_file():
            raise CheckpointError(
                f"model.init_from: {directory} has no model.safetensors ({_WEIGHTS_FIX})"
            )
        return {single: None}
    fix = f"fix it or re-save the model with save_pretrained ({directory})"
    data = read_json_object(index, CheckpointError, fix=fix)
    weight_map = field(
        data, "weight_map", "dict", file=index, error=CheckpointError, fix=fix,
        check=bool, allowed="a non-empty object",
    )  # fmt: skip
    shards: dict[Path, Any] = {}
    for tensor, shard in weight_map.items():
        field(
            weight_map, tensor, "filename", file=index, error=CheckpointError,
            fix=f"each shard must be a file in {directory}; {fix}",
        )  # fmt: skip
        shards.setdefault(directory / shard, []).append(tensor)
    for path in shards:
        if not path.is_file():
            raise CheckpointError(
                f"model.init_from: {index} names the shard {path.name}, which is missing; "
                "copy it there, or re-save the model with save_pretrained"
            )
    return {path: shards[path] for path in sorted(shards)}


def _read_safetensors(path: Path, expected: list[str] | None) -> dict[str, torch.Tensor]:
    """The tensors of `path`, through hookloop's checked safetensors reader (a file that is
    not safetensors, or is truncated, is a `CheckpointError`, never a crash)."""
    import mmap

    from hookloop.checkpoint.tensorfile import read_tensors

    try:
        with open(path, "rb") as f:
            try:
                data: Any = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            except (OSError, ValueError):  # empty, or no mmap on this file system
                data = bytearray(f.read())
    except OSError as exc:
        raise CheckpointError(f"model.init_from: cannot read {path}: {exc.strerror}") from None
    tensors = read_tensors(data, name=f"model.init_from: {path}")
    missing = [name for name in expected or () if name not in tensors]
    if missing:
        raise CheckpointError(
            f"model.init_from: {path.parent / _INDEX} puts {missing[0]} in {path.name}, "
            f"which does not hold it; re-save the model with save_pretrained"
        )
    return tensors


def load_hf_weights(model: torch.nn.Module, init_from: str) -> None:
    """Copy the weights of the GPT-2 directory `init_from = "hf:PATH"` names into `model`
    (a `TinyTransformerLM` built with `hf_model_options`). Reads `model.safetensors` (or
    the shards its index names) with hookloop's checked reader; `pytorch_model.bin` is
    refused: it would be unpickled. Each tensor's shape is checked against the model's
    before any is copied.

    Raises:
        CheckpointError: no safetensors weights, a malformed index or file, or tensors
            that do not fit the model.
    """
    directory = Path(init_from.removeprefix(HF_PREFIX))
    hf_state: dict[str, Any] = {}
    for path, expected in _weight_files(directory).items():
        hf_state.update(_read_safetensors(path, expected))
    n_layers = len(getattr(model, "blocks", []))
    state = from_gpt2_state(hf_state, n_layers, str(directory))
    ours = model.state_dict()
    for name, tensor in state.items():
        if name in ours and tuple(tensor.shape) != tuple(ours[name].shape):
            raise CheckpointError(
                f"model.init_from: {directory} does not fit: {name} has shape "
                f"{list(tensor.shape)}, the model from its config.json needs "
                f"{list(ours[name].shape)}; re-save the model with save_pretrained"
            )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"model.init_from: {directory} does not fit: {first}") from exc


def export_hf(
    model_state: dict[str, torch.Tensor],
    model_config: dict[str, Any],
    tokenizer: Tokenizer,
    tokenizer_file: Path,
    out: Path,
) -> list[Path]:
    """Write a GPT-2 directory `transformers.AutoModelForCausalLM.from_pretrained` loads.

    Args:
        model_state: The `TinyTransformerLM` state dict (aliases resolved).
        model_config: The run's `[model]` section.
        tokenizer: The run's tokenizer.
        tokenizer_file: The run's `tokenizer.json` (copied as `hookloop_tokenizer.json`).
        out: The directory to write (created; existing files of the same names replaced,
            and an earlier export's `tokenizer.json` removed when this one has none). The
            caller first checks it with `hookloop.lm.export_target.check_export_target`.

    Returns:
        The files written.
    """
    from safetensors.torch import save

    out.mkdir(parents=True, exist_ok=True)
    vocab = model_state["tok_emb.weight"].shape[0]
    n_layers = len({k.split(".")[1] for k in model_state if k.startswith("blocks.")})
    config = gpt2_config(model_config, vocab)
    weights = save(to_gpt2_state(model_state, n_layers), metadata={"format": "pt"})
    files = {
        "config.json": (json.dumps(config, indent=2) + "\n").encode(),
        "model.safetensors": weights,
        "hookloop_tokenizer.json": tokenizer_file.read_bytes(),
    }
    hf_tokenizer = _hf_tokenizer_json(tokenizer)
    if hf_tokenizer is not None:
        files["tokenizer.json"] = json.dumps(hf_tokenizer).encode()
        files["tokenizer_config.json"] = (
            json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}) + "\n"
        ).encode()
    for name, data in files.items():  # each one whole, whenever the export is interrupted
        replace_file(out / name, data)
    for name in _HF_TOKENIZER_FILES - files.keys():
        # An earlier export's tokenizer, left in the directory, would load for this model.
        (out / name).unlink(missing_ok=True)
    return [out / name for name in files]


_HF_TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json"}


def _hf_tokenizer_json(tokenizer: Tokenizer) -> dict[str, Any] | None:
    """A `tokenizers` JSON for byte and bpe tokenizers; None for char (see the module doc)."""
    if tokenizer.kind == "bpe":
        return tokenizer.to_json()["tokenizer"]
    if tokenizer.kind != "byte":
        return None
    # id i is byte i: a byte-level BPE with the 256 byte symbols and no merges
    symbols = _byte_symbols()
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False,
        },
        "post_processor": None,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": {symbols[b]: b for b in range(256)},
            "merges": [],
        },
    }


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-in character for each byte value (`bytes_to_unicode`)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    symbols, extra = {}, 0
    for b in range(256):
        if b in keep:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]
