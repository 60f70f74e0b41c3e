"""Property-based tests: whatever bytes or JSON a file holds, and whatever `--set` says,
hookloop's readers raise nothing but hookloop's own errors.

Covered: the config parser (TOML text, bytes, tables), `--set` parsing, `state.json`
(arbitrary JSON, and a valid one with one field replaced), `meta.json`, `tokenizer.json`,
the safetensors header reader and torchrun's rank variables. Examples are bounded so the
module stays fast.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import shutil
import string
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hookloop.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from hookloop.checkpoint.tensorfile import read_tensors, write_tensors
from hookloop.errors import CheckpointError, ConfigError, DataError, HookloopError
from hookloop.lm.config import dumps_toml, load_config, parse_override
from hookloop.lm.mixture import check_sources
from hookloop.lm.prepare import read_meta
from hookloop.lm.schema import SCHEMA, SECTIONS
from hookloop.lm.sources import open_source
from hookloop.lm.tokenizers import load_tokenizer

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
KEYS = sorted({k for keys in SCHEMA.values() for k in keys} | {"bogus", "enable", "every"})


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- config.toml and --set --------------------------------------------------------------------


@FUZZ
@given(text=st.text(max_size=200))
def test_any_config_text_gives_a_config_or_a_config_error(tmp_path, text):
    with contextlib.suppress(ConfigError):
        load_config(_write(tmp_path / "c.toml", text.encode("utf-8", "surrogatepass")))


@FUZZ
@given(data=st.binary(max_size=200))
def test_any_config_bytes_give_a_config_or_a_config_error(tmp_path, data):
    with contextlib.suppress(ConfigError):
        load_config(_write(tmp_path / "c.toml", data))


toml_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.text(max_size=10),
)
toml_values = st.one_of(toml_scalars, st.lists(toml_scalars, max_size=3))
tables = st.dictionaries(
    st.sampled_from([*SECTIONS, "modle"]),
    st.one_of(
        toml_values,
        st.dictionaries(
            st.sampled_from(KEYS),
            st.one_of(toml_values, st.dictionaries(st.sampled_from(KEYS), toml_values)),
            max_size=4,
        ),
    ),
    max_size=4,
)


@FUZZ
@given(table=tables)
def test_any_well_formed_toml_table_gives_a_config_or_a_config_error(tmp_path, table):
    path = tmp_path / "c.toml"
    try:
        path.write_text(dumps_toml(table))
        config = load_config(path)
    except ConfigError:
        return
    assert set(config) == set(SECTIONS)


@FUZZ
@given(item=st.text(max_size=60))
def test_any_set_string_gives_a_config_or_a_config_error(item):
    try:
        parse_override(item)
        load_config(None, [item])
    except ConfigError:
        pass


@FUZZ
@given(
    key=st.sampled_from([f"{s}.{k}" for s, keys in SCHEMA.items() for k in keys]),
    raw=st.text(alphabet=string.printable, max_size=30),
)
def test_any_value_for_a_known_key_gives_a_config_or_a_config_error(key, raw):  # fmt: skip
    with contextlib.suppress(ConfigError):
        load_config(None, [f"{key}={raw}"])


# --- meta.json and tokenizer.json ------------------------------------------------------------


@FUZZ
@given(content=st.one_of(json_values.map(json.dumps), st.binary(max_size=100)))
def test_any_meta_json_gives_a_meta_or_a_data_error(tmp_path, content):
    data = content.encode() if isinstance(content, str) else content
    _write(tmp_path / "meta.json", data)
    with contextlib.suppress(DataError):
        read_meta(tmp_path)


tokenizers = st.one_of(
    json_values,
    st.fixed_dictionaries({"kind": st.sampled_from(["char", "byte", "bpe", "x"])}, optional={"chars": json_values, "tokenizer": json_values}),
)  # fmt: skip


@FUZZ
@given(content=st.one_of(tokenizers.map(json.dumps), st.binary(max_size=100)))
def test_any_tokenizer_json_gives_a_tokenizer_or_a_data_error(tmp_path, content):
    data = content.encode() if isinstance(content, str) else content
    with contextlib.suppress(DataError):
        load_tokenizer(_write(tmp_path / "tokenizer.json", data))


# --- prepare sources: JSON lines and Parquet --------------------------------------------------

texts_with_surrogates = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
    ),
    max_size=8,
)
json_records = st.one_of(
    json_values,
    st.fixed_dictionaries({"text": st.one_of(texts_with_surrogates, json_values)}),
)


def _read_all(source) -> list[str]:
    """Every document of `source` joined; each must be valid Unicode when it is read at all."""
    out = ["".join(doc) for doc in source.documents()]
    for text in out:
        text.encode("utf-8")  # a lone surrogate must never get through
    return out


@FUZZ
@given(records=st.lists(json_records, max_size=4), junk=st.binary(max_size=20))
def test_any_json_lines_give_documents_or_a_data_error(tmp_path, records, junk):
    lines = [json.dumps(r).encode() for r in records] + ([junk] if junk.strip() else [])
    path = _write(tmp_path / "s.jsonl", b"\n".join(lines) + b"\n")
    with contextlib.suppress(DataError):
        open_source(path).count_documents()
        _read_all(open_source(path))


@pytest.fixture(scope="module")
def parquet_bytes(tmp_path_factory) -> bytes:
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    path = tmp_path_factory.mktemp("pq") / "g.parquet"
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(600)]}), path, row_group_size=200)
    return path.read_bytes()


@FUZZ
@given(cut=st.integers(0, 10**6), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4), junk=st.binary(max_size=40))  # fmt: skip
def test_any_damaged_parquet_gives_documents_or_a_data_error(
    tmp_path, parquet_bytes, cut, flips, junk
):
    data = bytearray(parquet_bytes[: len(parquet_bytes) - cut % len(parquet_bytes)] + junk)
    for at, value in flips:
        if data:
            data[at % len(data)] = value
    path = _write(tmp_path / "d.parquet", bytes(data))
    with contextlib.suppress(DataError):
        open_source(path).count_documents()
        _read_all(open_source(path))


# --- data.sources weights ------------------------------------------------------------------


@FUZZ
@given(weights=st.lists(st.one_of(st.floats(), st.integers(-(2**70), 2**1100), scalars), min_size=1, max_size=4))  # fmt: skip
def test_any_source_weights_are_refused_or_normalise_to_finite_probabilities(weights):
    entries = [{"path": f"d{i}", "weight": w} for i, w in enumerate(weights)]
    with contextlib.suppress(ConfigError):
        checked = [e["weight"] for e in check_sources(entries)]
        total = sum(checked)
        assert all(math.isfinite(w / total) and w > 0 for w in checked), checked


# --- model.init_from = "hf:...": config.json ----------------------------------------------------

wrong_types = st.one_of(
    st.none(), st.booleans(), st.floats(), st.text(max_size=4), st.lists(st.integers(), max_size=2),
    st.integers(-(2**70), 2**70),
)  # fmt: skip
hf_configs = st.fixed_dictionaries(
    {"model_type": st.one_of(st.just("gpt2"), wrong_types)},
    optional={
        **{k: st.one_of(st.integers(-2, 24), wrong_types) for k in ("vocab_size", "n_embd", "n_head", "n_layer", "n_positions", "n_inner")},
        "activation_function": st.one_of(st.sampled_from(["gelu", "gelu_new", "relu"]), wrong_types),
        "tie_word_embeddings": st.one_of(st.just(True), wrong_types),
        "scale_attn_weights": wrong_types,
    },
)  # fmt: skip


@FUZZ
@given(config=st.one_of(hf_configs, json_values), raw=st.one_of(st.none(), st.binary(max_size=30)))
def test_any_init_from_config_json_gives_a_model_or_a_config_error(tmp_path, config, raw):
    from hookloop.lm.recipe import build_model

    directory = tmp_path / "gpt"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    (directory / "config.json").write_bytes(raw if raw is not None else json.dumps(config).encode())
    try:
        loaded = load_config(None, [f"model.init_from=hf:{directory}", "data.seq_len=2"])
    except ConfigError:
        return
    m = loaded["model"]
    assert all(type(m[k]) is int and m[k] >= 1 for k in ("d_model", "n_heads", "n_layers", "d_ff"))
    assert m["d_model"] % m["n_heads"] == 0
    if max(m["vocab_size"], m["d_model"], m["d_ff"], m["max_seq_len"], m["n_layers"]) <= 64:
        build_model(loaded, 1)  # small enough to build here: it must build


# --- safetensors headers ---------------------------------------------------------------------


RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")  # fmt: skip
rank_values = st.one_of(
    st.integers(-3, 70000).map(str),
    st.sampled_from(["", " ", "1.0", "0x1", "1e3", "٣", "9" * 30, "localhost"]),
    st.text(max_size=8),
)


@FUZZ
@given(env=st.dictionaries(st.sampled_from(RANK_VARIABLES), rank_values, max_size=6))
def test_any_rank_environment_is_a_launch_none_or_one_config_error(env):
    """Whatever torchrun-style variables a shell holds: no launch, a consistent launch, or
    one line saying what is wrong; never a ValueError or a launch torch could not start."""
    from hookloop.distributed import launch_from_env

    try:
        found = launch_from_env(env)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    if found is None:
        assert not {"RANK", "WORLD_SIZE", "LOCAL_RANK"} & set(env)
        return
    rank, world, local = found.rank, found.world_size, found.local_rank
    assert 0 <= rank < world and local >= 0
    assert env["MASTER_ADDR"].strip() and 1 <= int(env["MASTER_PORT"]) <= 65535


@FUZZ
@given(data=st.binary(max_size=300))
def test_any_bytes_give_tensors_or_a_checkpoint_error(data):
    with contextlib.suppress(CheckpointError):
        read_tensors(bytearray(data))


entries = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from(["F32", "I64", "BF16", "U8", "F99", 3]),
        "shape": st.one_of(st.lists(st.integers(-2, 2**41), max_size=3), json_values),
        "data_offsets": st.one_of(st.lists(st.integers(-4, 64), max_size=3), json_values),
    },
)


@FUZZ
@given(
    header=st.dictionaries(st.text(max_size=5), st.one_of(entries, json_values), max_size=4),
    tail=st.binary(max_size=64),
    claimed=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
)
def test_any_safetensors_header_gives_tensors_or_a_checkpoint_error(header, tail, claimed):
    text = json.dumps(header).encode()
    size = len(text) if claimed is None else claimed
    with contextlib.suppress(CheckpointError):
        read_tensors(bytearray(size.to_bytes(8, "little") + text + tail))


def test_a_written_file_reads_back():  # the property above is not vacuous
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64)}
    path = Path(__import__("tempfile").mkdtemp()) / "t.safetensors"
    write_tensors(path, tensors)
    back = read_tensors(bytearray(path.read_bytes()))
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
    shutil.rmtree(path.parent)


# --- state.json -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A valid checkpoint of a tiny engine, and the engine's maker."""
    from hookloop import Engine

    def make() -> Engine:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 4)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
        data = [(torch.randn(2, 4), torch.randn(2, 4)) for _ in range(3)]
        loss = lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1])  # noqa: E731
        return Engine(model, optimizer, data, loss_fn=loss)

    engine = make()
    engine.fit(max_steps=2)
    path = save_checkpoint(engine, tmp_path_factory.mktemp("ck") / "step-00000002")
    return path, make


def _paths(value, prefix=()):
    """Every path of keys/indices into a JSON value."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:3]):
            yield from _paths(v, (*prefix, i))


def _replace(value, path, new):
    if not path:
        return new
    value[path[0]] = _replace(value[path[0]], path[1:], new)
    return value


def _copy_with_state(checkpoint_dir: Path, tmp: Path, state_bytes: bytes) -> Path:
    target = tmp / "step-00000002"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(checkpoint_dir, target)
    (target / "state.json").write_bytes(state_bytes)
    return target


@FUZZ
@given(content=st.one_of(json_values.map(json.dumps), st.binary(max_size=100)))
def test_any_state_json_gives_a_checkpoint_or_a_checkpoint_error(checkpoint, tmp_path, content):
    data = content.encode() if isinstance(content, str) else content
    with contextlib.suppress(CheckpointError):
        read_checkpoint(_copy_with_state(checkpoint[0], tmp_path, data))


@FUZZ
@given(choice=st.integers(0, 10**6), new=json_values)
def test_a_valid_state_json_with_one_field_replaced_loads_or_is_refused(
    checkpoint, tmp_path, choice, new
):
    path, make = checkpoint
    state = json.loads((path / "state.json").read_text())
    paths = [p for p in _paths(state) if p]
    changed = _replace(copy.deepcopy(state), paths[choice % len(paths)], new)
    target = _copy_with_state(path, tmp_path, json.dumps(changed).encode())
    engine = make()
    with contextlib.suppress(HookloopError):
        load_checkpoint(engine, target)
