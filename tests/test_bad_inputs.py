"""A hostile user's table: every row is a bad input given to the real command line.

Each row prepares a copy of one trained run (and its data), breaks something, runs one
`hookloop` command, and asserts: exit status 2, a message of at most a few lines that names
the problem and the fix, no traceback, and every file that existed before byte-for-byte
unchanged (`journal.jsonl` may only grow: refusals are recorded there). Rows marked
`subprocess` run `python -m hookloop`; the others call `hookloop.cli.main` in this process,
which is the same code without the interpreter start-up.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hookloop import runlock
from hookloop.cli import main

TEXT = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(120))
TINY = [
    "model.d_model=16",
    "model.n_heads=2",
    "model.n_layers=1",
    "model.d_ff=32",
    "model.max_seq_len=16",
    "data.seq_len=16",
    "data.batch_size=4",
    "data.val_batches=2",
    "training.max_steps=2",
    "training.device=cpu",
    "training.threads=1",
    "plugins.eval.max_batches=1",
]
CKPT = "run/checkpoints/step-00000002"
# A protocol-0 pickle that, if it were ever unpickled, would create the file `pwned`.
EVIL_PICKLE = b"cos\nsystem\n(S'touch pwned'\ntR."


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """data/ (prepared, char-level) and run/ (2 steps, a checkpoint at step 2)."""
    from hookloop.lm.prepare import prepare_texts, split_text

    root = tmp_path_factory.mktemp("base")
    train, val = split_text(TEXT, 0.1)
    prepare_texts(train, val, root / "data", tokenizer="char", source="test")
    from hookloop.lm.config import load_config
    from hookloop.lm.recipe import build_run

    old = os.environ.get("HOOKLOOP_DISABLE_PLUGIN_AUTOLOAD"), os.getcwd()
    os.environ["HOOKLOOP_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    os.chdir(root)  # a relative data.path: each copy of the run reads its own copy of the data
    try:  # what `hookloop train` writes, without its final evaluation and plot
        build_run(
            load_config(None, [*TINY, "data.path=data", 'plugins.disable=["progress"]']), "run"
        ).fit()
    finally:
        os.chdir(old[1])
        if old[0] is None:
            del os.environ["HOOKLOOP_DISABLE_PLUGIN_AUTOLOAD"]
    assert (root / CKPT / "state.json").is_file()
    (root / "run" / ".lock").unlink(missing_ok=True)
    return root


# --- ways to break a copy ----------------------------------------------------------------


def write(rel: str, content: bytes | str) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        path = w / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    return setup


def edit_json(rel: str, change: Callable[[dict], object]) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        data = json.loads((w / rel).read_text())
        change(data)  # in place
        (w / rel).write_text(json.dumps(data))

    return setup


def replace_tensor_file(content: Callable[[bytes], bytes], *, rehash: bool, old_format=False):
    """Replace the checkpoint's model.safetensors; `rehash` also forges its checksum and
    size; `old_format` records every file's SHA-256 the way checkpoints did before the
    checksum was configurable (`files.<name>.sha256`), taken before the replacement."""

    def setup(w: Path) -> None:
        path = w / CKPT / "model.safetensors"
        state = json.loads((w / CKPT / "state.json").read_text())
        if old_format:
            for name, info in state["files"].items():
                digest = hashlib.sha256((w / CKPT / name).read_bytes()).hexdigest()
                state["files"][name] = {"sha256": digest, "bytes": info["bytes"]}
        data = content(path.read_bytes())
        path.write_bytes(data)
        if rehash:
            state["files"]["model.safetensors"] = {
                "checksum": f"crc32:{zlib.crc32(data):08x}",
                "bytes": len(data),
            }
        (w / CKPT / "state.json").write_text(json.dumps(state))

    return setup


def flip_byte(data: bytes) -> bytes:
    return data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:]


def overlapping(data: bytes) -> bytes:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    first = next(k for k in header if k != "__metadata__")
    header[first]["data_offsets"][0] += 4
    header[first]["data_offsets"][1] += 4
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def chmod_or_patch(target: str):
    """Make `target` fail to be written: a PermissionError from os.open under it."""

    def patch(monkeypatch, w: Path) -> None:
        real = os.open

        def deny(path, *args, **kwargs):
            if str(path).startswith(str(w / target)):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", deny)

    return patch


def deny_writes_under(target: str):
    """Any file opened for writing under `target` fails as in a read-only directory."""

    def patch(monkeypatch, w: Path) -> None:
        import builtins

        real = builtins.open

        def deny(file, mode="r", *args, **kwargs):
            if str(Path(file).absolute()).startswith(str(w / target)) and set(mode) & set("wax+"):
                raise PermissionError(errno.EACCES, "Permission denied", str(file))
            return real(file, mode, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", deny)

    return patch


def read_only(rel: str) -> Callable[[Path], None]:
    """A real read-only directory (only bites when not running as root)."""

    def setup(w: Path) -> None:
        (w / rel).mkdir(parents=True, exist_ok=True)
        (w / rel).chmod(0o555)

    return setup


ROOT = os.geteuid() == 0


def broken_plugin(w: Path) -> None:
    """An installed third-party plugin (a distribution on PYTHONPATH) that raises on import."""
    site = w / "site"
    (site / "broken_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "broken_plugin.py").write_text("raise RuntimeError('boom at import')\n")
    (site / "broken_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n"
    )
    (site / "broken_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[hookloop]\nbroken = broken_plugin:Plugin\n"
    )


def truncated_parquet(rel: str) -> Callable[[Path], None]:
    """A real Parquet file of a few row groups, cut in half (its footer gone)."""

    def setup(w: Path) -> None:
        pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
        pq.write_table(pa.table({"text": ["x" * 50] * 2000}), w / rel, row_group_size=500)
        data = (w / rel).read_bytes()
        (w / rel).write_bytes(data[: len(data) // 2])

    return setup


def saved_dataset(rel: str) -> Callable[[Path], None]:
    """A Hugging Face `Dataset` (no named splits) written by `save_to_disk`."""

    def setup(w: Path) -> None:
        datasets = pytest.importorskip("datasets")
        datasets.disable_progress_bars()  # its bars would go to the stderr this test reads
        datasets.Dataset.from_dict({"text": ["alpha", "beta"]}).save_to_disk(str(w / rel))

    return setup


GPT2 = {"model_type": "gpt2", "vocab_size": 64, "n_embd": 16, "n_head": 2, "n_layer": 1, "n_positions": 16, "n_inner": 32}  # fmt: skip


def gpt2(config: Callable[[dict], object] | None = None, **files: bytes | str):
    """gpt/: a tiny GPT-2-format directory (config.json, model.safetensors), `config`
    changing its config.json and `files` (dots for underscores) replacing or adding files."""

    def setup(w: Path) -> None:
        import torch
        from safetensors.torch import save_file

        (w / "gpt").mkdir()
        settings = dict(GPT2)
        e, v, p, inner = settings["n_embd"], settings["vocab_size"], settings["n_positions"], 32
        shapes = {"wte.weight": [v, e], "wpe.weight": [p, e], "ln_f.weight": [e], "ln_f.bias": [e]}
        for name, shape in {
            "ln_1.weight": [e], "ln_1.bias": [e], "ln_2.weight": [e], "ln_2.bias": [e],
            "attn.c_attn.weight": [e, 3 * e], "attn.c_attn.bias": [3 * e],
            "attn.c_proj.weight": [e, e], "attn.c_proj.bias": [e],
            "mlp.c_fc.weight": [e, inner], "mlp.c_fc.bias": [inner],
            "mlp.c_proj.weight": [inner, e], "mlp.c_proj.bias": [e],
        }.items():  # fmt: skip
            shapes[f"h.0.{name}"] = shape
        tensors = {f"transformer.{k}": torch.zeros(shape) for k, shape in shapes.items()}
        save_file(tensors, str(w / "gpt" / "model.safetensors"))
        if config is not None:
            config(settings)
        (w / "gpt" / "config.json").write_text(json.dumps(settings))
        for name, content in files.items():
            write(f"gpt/{name.replace('_', '.')}", content)(w)

    return setup


def steps(**counters: object) -> Callable[[dict], None]:
    return lambda s: s["counters"].update(counters)


@dataclass
class Row:
    """One bad input: the command, how the copy is broken, and what the message must say."""

    id: str
    args: list[str]
    problem: str  # a part of the message that names what is wrong
    fix: str  # a part of the message that says what to do
    setup: Callable[[Path], None] | None = None
    patch: Callable | None = None  # (monkeypatch, workspace): in-process rows only
    subprocess: bool = False
    env: dict[str, str] = field(default_factory=dict)


TRAIN = ["train", "--run-dir", "new", "--set", "data.path=data", *_sets(TINY)]
RESUME = ["train", "--resume", "auto", "--run-dir", "run"]
EVAL = ["eval", "--run", "run", "--max-batches", "1"]
SAMPLE = ["sample", "--run", "run", "--max-new-tokens", "2"]
EXPORT = ["export", "run", "--format", "hf", "--out"]
PREPARE = ["prepare", "--out", "prepared"]
INIT = ["train", "--run-dir", "new", "--set", "data.path=data", "--set", "model.init_from=hf:gpt", *_sets([o for o in TINY if not o.startswith("model.")])]  # fmt: skip
MIX = ["train", "--run-dir", "new", "-c", "mix.toml", *_sets(TINY)]


def mix(*weights: str) -> Callable[[Path], None]:
    """mix.toml: `data.sources` over copies of the prepared data, with these weights."""

    def setup(w: Path) -> None:
        entries = []
        for i, weight in enumerate(weights):
            shutil.copytree(w / "data", w / f"data{i}")
            entries.append(f'{{path = "data{i}", weight = {weight}}}')
        (w / "mix.toml").write_text(f"[data]\nsources = [{', '.join(entries)}]\n")

    return setup


ROWS = [
    # --- --set values: type and range, before anything is created ---------------------------
    Row("set-huge-seed", [*TRAIN, "--set", "training.seed=" + "9" * 30], "training.seed must be at most", "must be at most"),
    Row("set-string-for-int", [*TRAIN, "--set", "model.n_layers=four"], "model.n_layers must be an integer", "'four'", subprocess=True),
    Row("set-nan-lr", [*TRAIN, "--set", "optimizer.lr=nan"], "optimizer.lr must be finite", "--set"),
    Row("set-inf-dropout", [*TRAIN, "--set", "model.dropout=inf"], "model.dropout must be finite", "--set"),
    Row("set-negative-batch", [*TRAIN, "--set", "data.batch_size=-1"], "data.batch_size must be >= 1", "-1"),
    Row("set-huge-steps", [*TRAIN, "--set", "training.max_steps=1e400"], "training.max_steps must be an integer", "inf"),
    Row("set-unknown-key", [*TRAIN, "--set", "model.n_layer=2"], "unknown config key model.n_layer", "did you mean model.n_layers", subprocess=True),
    Row("set-unknown-section", [*TRAIN, "--set", "modle.n_layers=2"], "unknown config section [modle]", "did you mean [model]"),
    Row("set-without-equals", [*TRAIN, "--set", "model.n_layers"], "expected SECTION.KEY=VALUE", "--set model.n_layers=6"),
    Row("set-bad-choice", [*TRAIN, "--set", "data.sampling=randm"], "data.sampling must be one of random, sequential", "randm"),
    Row("set-two-values-in-one", [*TRAIN, "--set", "model.n_layers=1\nx=2"], "model.n_layers must be an integer", "--set"),
    Row("device-unavailable", [*TRAIN, "--set", "training.device=cuda:63"], "training.device 'cuda:63'", "use auto, cpu", subprocess=True),
    Row("device-not-a-device", [*TRAIN, "--set", "training.device=toaster"], "'toaster' is not a device name", "use auto, cpu"),
    Row("model-too-big-for-memory", [*TRAIN, "--set", "model.d_model=1073741824", "--set", "model.d_ff=1073741824"], "GiB to train", "lower model.d_model"),
    Row("seq-len-over-max", [*TRAIN, "--set", "data.seq_len=17"], "data.seq_len (17) must not exceed model.max_seq_len", "lower data.seq_len"),
    Row("warmup-longer-than-run", [*TRAIN, "--set", "plugins.schedule.warmup_steps=5"], "warmup_steps (5) must be smaller", "shorten it or train longer"),
    Row("plugin-option-string", [*TRAIN, "--set", "plugins.checkpoint.every_steps=abc"], "option every_steps must be an integer", "'abc'"),
    Row("plugin-option-huge", [*TRAIN, "--set", "plugins.checkpoint.keep_last=" + "9" * 25], "option keep_last must be an integer below 2**63", "999"),
    Row("plugin-unknown", [*TRAIN, "-p", "clipp"], "unknown plugin 'clipp'", "did you mean 'clip'"),
    Row("plugins-enable-not-a-list", [*TRAIN, "--set", "plugins.enable=3"], "plugins.enable must be a list", "got 3"),
    # --- config files ------------------------------------------------------------------------
    Row("config-is-a-directory", [*TRAIN, "-c", "data"], "data is a directory, not a file", "pass a TOML config file"),
    Row("config-not-utf8", [*TRAIN, "-c", "bad.toml"], "bad.toml is not UTF-8 text", "pass a TOML config file", write("bad.toml", b"\xff\xfe[model]\n"), subprocess=True),
    Row("config-not-toml", [*TRAIN, "-c", "bad.toml"], "bad.toml is not valid TOML", "correct it there", write("bad.toml", "model = [\n")),
    Row("config-missing", [*TRAIN, "-c", "nope.toml"], "config file nope.toml does not exist", "nope.toml", subprocess=True),
    Row("config-nested-too-deep", [*TRAIN, "-c", "deep.toml"], "deep.toml", "TOML", write("deep.toml", "a = " + "[" * 5000)),
    Row("config-section-not-a-table", [*TRAIN, "-c", "c.toml"], "config section [model] must be a table", "in c.toml", write("c.toml", "model = 3\n")),
    # --- run directories, resume and restart -------------------------------------------------
    Row("run-dir-is-a-file", ["train", "--run-dir", "data/meta.json"], "--run-dir data/meta.json is a file", "pass a directory", subprocess=True),
    Row("runs-is-a-file", ["train", "--runs", "data/meta.json"], "--runs data/meta.json is a file", "pass a directory", subprocess=True),
    Row("fresh-train-into-a-run", ["train", "--run-dir", "run", "--set", "data.path=data"], "already holds a run", "--resume auto --run-dir run"),
    Row("resume-all-checkpoints-corrupt", RESUME, "nothing valid to resume from", "--restart --run-dir run", replace_tensor_file(flip_byte, rehash=False)),
    Row("resume-every-checkpoint-corrupt", RESUME, "nothing valid to resume from", "--restart", lambda w: [s.write_text("{}") for s in (w / "run" / "checkpoints").glob("*/state.json")]),
    Row("resume-with-c-changing-the-model", [*RESUME, "-c", "other.toml"], "the config differs from the run's in what defines the model", "--force", write("other.toml", "[model]\nn_layers = 3\n"), subprocess=True),
    Row("resume-unsafe-change", [*RESUME, "--set", "model.n_layers=2"], "model.n_layers (1 in the run, 2 now)", "--force"),
    Row("resume-path-not-a-run", ["train", "--resume", "data"], "not a checkpoint directory", "pass auto, a run directory"),
    Row("resume-a-pickle-file", ["train", "--resume", "evil.pt"], "not a checkpoint directory", "pass auto", write("evil.pt", EVIL_PICKLE)),
    Row("restart-without-a-run", ["train", "--restart"], "--restart needs the run", "pass --run-dir DIR", subprocess=True),
    Row("run-dir-not-writable", TRAIN, "cannot create run directory new", "choose a writable place", patch=lambda mp, w: mp.setattr(Path, "mkdir", _deny_mkdir)),
    Row("run-dir-lock-not-writable", ["train", "--resume", "auto", "--run-dir", "run"], "cannot lock run directory run", "is it writable", patch=chmod_or_patch("run")),
    Row("plot-out-not-writable", ["plot", "run", "--out", "ro/m.png"], "cannot use ro/m.png: Permission denied", "make it writable", patch=deny_writes_under("ro")),
    Row("runs-read-only-for-real", ["train", "--runs", "ro", "--set", "data.path=data"], "cannot create run directory ro/", "choose a writable place", read_only("ro")),
    Row("plot-out-read-only-for-real", ["plot", "run", "--out", "ro/m.png"], "Permission denied", "make it writable", read_only("ro")),
    # --- checkpoints: every reader verifies ---------------------------------------------------
    Row("eval-tampered-tensor-bytes", [*EVAL, "--checkpoint", "step-00000002"], "model.safetensors does not match its checksum (crc32)", "earlier checkpoint", replace_tensor_file(flip_byte, rehash=False), subprocess=True),
    Row("eval-tampered-old-sha256-format", [*EVAL, "--checkpoint", "step-00000002"], "model.safetensors does not match its checksum (sha256)", "earlier checkpoint", replace_tensor_file(flip_byte, rehash=False, old_format=True)),
    Row("sample-tampered-tensor-bytes", SAMPLE, "no checkpoint that verifies", "pass --checkpoint", replace_tensor_file(flip_byte, rehash=False)),
    Row("sample-truncated-safetensors", [*SAMPLE, "--checkpoint", "step-00000002"], "state.json says",  "earlier checkpoint", replace_tensor_file(lambda d: d[: len(d) // 2], rehash=False)),
    Row("sample-truncated-forged-hash", [*SAMPLE, "--checkpoint", "step-00000002"], "model.safetensors: tensor", "not a safetensors file", replace_tensor_file(lambda d: d[: len(d) // 2], rehash=True)),
    Row("sample-pickle-as-safetensors", [*SAMPLE, "--checkpoint", "step-00000002"], "(truncated or replaced)", "earlier checkpoint", replace_tensor_file(lambda d: EVIL_PICKLE, rehash=False), subprocess=True),
    Row("eval-pickle-as-safetensors-forged", [*EVAL, "--checkpoint", "step-00000002"], "model.safetensors is truncated or not safetensors", "not a safetensors file", replace_tensor_file(lambda d: EVIL_PICKLE, rehash=True), subprocess=True),
    Row("eval-overlapping-tensors", [*EVAL, "--checkpoint", "step-00000002"], "overlaps or has a gap", "not a safetensors file", replace_tensor_file(overlapping, rehash=True)),
    Row("state-json-is-a-pickle", [*EVAL, "--checkpoint", "step-00000002"], "state.json is not UTF-8 text", "earlier checkpoint", write(f"{CKPT}/state.json", EVIL_PICKLE + b"\x80\x04")),
    Row("state-json-counter-string", ["train", "--resume", CKPT], "field counters.step must be an integer >= 0, got 'abc'", "earlier checkpoint", edit_json(f"{CKPT}/state.json", steps(step="abc"))),
    Row("state-json-missing-files", [*EVAL, "--checkpoint", "step-00000002"], "field files is missing", "earlier checkpoint", edit_json(f"{CKPT}/state.json", lambda s: s.pop("files"))),
    Row("state-json-not-an-object", [*SAMPLE, "--checkpoint", "step-00000002"], "it must hold a JSON object", "earlier checkpoint", write(f"{CKPT}/state.json", "[1, 2]")),
    Row("state-json-path-escape", [*EVAL, "--checkpoint", "step-00000002"], "must be a plain file name", "earlier checkpoint", edit_json(f"{CKPT}/state.json", lambda s: s["files"].update({"../../config.toml": s["files"]["model.safetensors"]}))),
    Row("state-json-unknown-checksum", [*EVAL, "--checkpoint", "step-00000002"], "checksum names the unknown algorithm 'md5'", "earlier checkpoint", edit_json(f"{CKPT}/state.json", lambda s: s["files"]["model.safetensors"].update(checksum="md5:" + "0" * 32))),
    Row("state-json-malformed-checksum", ["train", "--resume", CKPT], 'must be "<algorithm>:<hex digest>"', "earlier checkpoint", edit_json(f"{CKPT}/state.json", lambda s: s["files"]["optimizer.safetensors"].update(checksum="crc32:xyz"))),
    Row("state-json-future-format", [*EVAL, "--checkpoint", "step-00000002"], "format version 99", "use the hookloop version that wrote it", edit_json(f"{CKPT}/state.json", lambda s: s.update(format_version=99))),
    Row("state-json-bad-rng", ["train", "--resume", CKPT], "field rng.numpy is not a generator state", "earlier checkpoint", edit_json(f"{CKPT}/state.json", lambda s: s["rng"].update(numpy=[1]))),
    Row("checkpoint-missing", [*EVAL, "--checkpoint", "step-99"], "run run has no checkpoint step-99", "it has: step-00000002"),
    # --- data and tokenizer files -------------------------------------------------------------
    Row("meta-json-wrong-type", TRAIN, "data/meta.json is malformed: field dtype must be a string", "prepare the data again", edit_json("data/meta.json", lambda m: m.update(dtype=5))),
    Row("meta-json-missing-key", TRAIN, "field vocab_size is missing", "prepare the data again", edit_json("data/meta.json", lambda m: m.pop("vocab_size")), subprocess=True),
    Row("meta-json-not-utf8", TRAIN, "data/meta.json is not UTF-8 text", "prepare the data again", write("data/meta.json", b'{"dtype": "\xff"}')),
    Row("meta-json-a-list", TRAIN, "the top level must be an object", "prepare the data again", write("data/meta.json", "[]")),
    Row("tokenizer-json-chars-not-list", TRAIN, "field chars must be a list", "prepare the data again", edit_json("data/tokenizer.json", lambda t: t.update(chars=5))),
    Row("tokenizer-json-missing-kind", TRAIN, "field kind is missing", "prepare the data again", edit_json("data/tokenizer.json", lambda t: t.pop("kind"))),
    Row("tokenizer-json-not-utf8", SAMPLE, "run/tokenizer.json is not UTF-8 text", "copy the run's tokenizer.json back", write("run/tokenizer.json", b"\xc3\x28")),
    Row("tokenizer-json-duplicate-chars", TRAIN, "distinct single characters", "prepare the data again", edit_json("data/tokenizer.json", lambda t: t.update(chars=["a", "a"]))),
    # --- prepare: every source is read through, checked, before anything is written ---------
    Row("prepare-lone-surrogate-in-json", [*PREPARE, "s.jsonl"], "s.jsonl line 2: field 'text' is not valid Unicode (lone surrogate '\\ud800'", "fix or remove the record", write("s.jsonl", '{"text": "ok"}\n{"text": "a\\ud800"}\n'), subprocess=True),
    Row("prepare-json-array-not-lines", [*PREPARE, "a.json"], "a.json holds one JSON array, not JSON lines", "write one record per line", write("a.json", '[\n  {"text": "one"},\n  {"text": "two"}\n]\n')),
    Row("prepare-json-array-on-one-line", [*PREPARE, "a.jsonl"], "a.jsonl holds one JSON array, not JSON lines", "a-lines.jsonl", write("a.jsonl", '[{"text": "one"}, {"text": "two"}]\n')),
    Row("prepare-json-pretty-object", [*PREPARE, "o.json"], "o.json holds one JSON document spread over several lines", "write each record on one line", write("o.json", '{\n  "text": "one"\n}\n')),
    Row("prepare-json-last-line-cut-off", [*PREPARE, "c.jsonl"], "c.jsonl line 3 is cut off: the file ends in the middle of a record", "complete or remove the line", write("c.jsonl", '{"text": "one"}\n{"text": "two"}\n{"text": "thr')),
    Row("prepare-json-nested-too-deep", [*PREPARE, "d.jsonl"], "d.jsonl line 21: JSON nested too deeply", "fix or remove the line", write("d.jsonl", '{"text": "ok"}\n' * 20 + "[" * 100_000 + "\n")),
    Row("prepare-parquet-not-parquet", [*PREPARE, "x.parquet"], "x.parquet is not a readable Parquet file", "write it again or leave it out with --glob", write("x.parquet", "text\nnot parquet\n")),
    Row("prepare-parquet-truncated", [*PREPARE, "cut.parquet"], "cut.parquet is not a readable Parquet file", "write it again", truncated_parquet("cut.parquet"), subprocess=True),
    Row("prepare-val-parquet-truncated", [*PREPARE, "t.txt", "--val", "cut.parquet"], "cut.parquet is not a readable Parquet file", "write it again", lambda w: (write("t.txt", TEXT)(w), truncated_parquet("cut.parquet")(w))),
    Row("prepare-hf-dataset-a-file", ["prepare", "--hf-dataset", "data/meta.json", "--out", "prepared"], "--hf-dataset data/meta.json is a file, not a directory written by Dataset.save_to_disk", "give it as PATH: hookloop prepare data/meta.json", subprocess=True),
    Row("prepare-hf-dataset-missing", ["prepare", "--hf-dataset", "gpt2", "--out", "prepared"], "--hf-dataset gpt2 does not exist", "give a directory written by Dataset.save_to_disk"),
    Row("prepare-hf-dataset-data-files", ["prepare", "--hf-dataset", "data", "--out", "prepared"], "--hf-dataset data is not a dataset written by save_to_disk", "give it as PATH: hookloop prepare data"),
    Row("prepare-hf-dataset-damaged", ["prepare", "--hf-dataset", "ds", "--out", "prepared"], "cannot read the saved dataset ds", "save it again with save_to_disk", write("ds/dataset_info.json", "{not json")),
    Row("prepare-glob-absolute", [*PREPARE, "data", "--glob", "/etc/*"], "--glob '/etc/*' is not a file pattern inside data", "give one relative to it"),
    Row("prepare-out-under-a-file", ["prepare", "data/meta.json", "--out", "data/meta.json/p"], "--out data/meta.json/p is under data/meta.json, which is a file", "choose another --out", subprocess=True),
    Row("prepare-bpe-vocab-huge", [*PREPARE, "data", "--tokenizer", "bpe", "--bpe-vocab-size", "9" * 20], "--bpe-vocab-size must be from 257 to 16,777,216", "got 999"),
    Row("prepare-piece-bytes-huge", [*PREPARE, "data", "--piece-bytes", "9" * 25], "--piece-bytes must be from 1 to 1,073,741,824", "got 999"),
    Row("prepare-hf-split-it-lacks", ["prepare", "--hf-dataset", "ds", "--split", "test", "--out", "prepared"], "single saved Dataset with no named splits, not 'test'", "leave out --split", saved_dataset("ds")),
    # --- data.sources weights: checked with the config, before the run directory is made ----
    Row("mix-weight-inf", MIX, "data.sources[0].weight must be a finite number > 0", "got inf in mix.toml", mix("inf", "1.0"), subprocess=True),
    Row("mix-weight-nan", MIX, "data.sources[1].weight must be a finite number > 0", "only the ratios of the weights matter", mix("1.0", "nan")),
    Row("mix-weight-negative", MIX, "data.sources[0].weight must be a finite number > 0", "got -0.5", mix("-0.5", "1.0")),
    Row("mix-weights-all-zero", MIX, "data.sources[0].weight must be a finite number > 0", "got 0.0", mix("0.0", "0.0")),
    Row("mix-weights-sum-overflows", MIX, "data.sources weights sum to more than the largest float (1e+308, 1e+308)", "scale them down", mix("1e308", "1e308"), subprocess=True),
    Row("mix-weight-set-inf", ["train", "--run-dir", "new", *_sets(TINY), "--set", "data.sources=[{path='data', weight=inf}]"], "weight must be a finite number > 0", "got inf"),
    # --- torchrun variables: checked before the run directory is made or a rendezvous tried --
    Row("rank-vars-without-rendezvous", TRAIN, "RANK=1, WORLD_SIZE=2 and LOCAL_RANK=1 are set but the rendezvous address is not (MASTER_ADDR and MASTER_PORT missing)", "launch with torchrun", subprocess=True, env={"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "", "MASTER_PORT": ""}),
    Row("rank-vars-rank-past-world", TRAIN, "out of range: RANK=2, WORLD_SIZE=2", "unset RANK, WORLD_SIZE and LOCAL_RANK", subprocess=True, env={"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}),
    Row("rank-vars-not-a-number", RESUME, "torchrun variable WORLD_SIZE must be a whole number, got 'two'", "launch with torchrun", subprocess=True, env={"RANK": "0", "WORLD_SIZE": "two", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}),
    Row("rank-vars-incomplete", TRAIN, "RANK='0' set but WORLD_SIZE and LOCAL_RANK not", "to run one process", subprocess=True, env={"RANK": "0", "WORLD_SIZE": "", "LOCAL_RANK": "", "MASTER_ADDR": "", "MASTER_PORT": ""}),
    Row("rank-vars-bad-port", TRAIN, "MASTER_PORT must be a port number from 1 to 65535, got '99999'", "launch with torchrun", subprocess=True, env={"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "99999"}),
    # --- model.init_from = "hf:...": every field of config.json, the index and the weights ----
    Row("init-config-not-an-object", INIT, "gpt/config.json is malformed: the top level must be an object, got list", "save_pretrained", gpt2(config_json="[16, 2]"), subprocess=True),
    Row("init-config-not-json", INIT, "gpt/config.json is not valid JSON", "save_pretrained", gpt2(config_json='{"n_head": 2,')),
    Row("init-config-string-heads", INIT, "field n_head must be an integer, got '2'", "save_pretrained", gpt2(lambda c: c.update(n_head="2")), subprocess=True),
    Row("init-config-float-width", INIT, "field n_embd must be an integer, got 16.0", "save_pretrained", gpt2(lambda c: c.update(n_embd=16.0))),
    Row("init-config-bool-layers", INIT, "field n_layer must be an integer, got True", "save_pretrained", gpt2(lambda c: c.update(n_layer=True))),
    Row("init-config-null-vocab", INIT, "field vocab_size must be an integer, got None", "save_pretrained", gpt2(lambda c: c.update(vocab_size=None))),
    Row("init-config-nan-positions", INIT, "field n_positions must be an integer, got nan", "save_pretrained", gpt2(config_json=json.dumps(GPT2).replace('"n_positions": 16', '"n_positions": NaN'))),
    Row("init-config-zero-heads", INIT, "field n_head must be an integer from 1 to 2147483647, got 0", "save_pretrained", gpt2(lambda c: c.update(n_head=0))),
    Row("init-config-negative-inner", INIT, "field n_inner must be null or an integer from 1", "got -4", gpt2(lambda c: c.update(n_inner=-4))),
    Row("init-config-heads-do-not-divide", INIT, "n_embd (16) must be divisible by n_head (3)", "save_pretrained", gpt2(lambda c: c.update(n_head=3))),
    Row("init-config-activation-a-list", INIT, "field activation_function must be a string, got []", "hookloop supports gelu", gpt2(lambda c: c.update(activation_function=[]))),
    Row("init-config-unsupported-a-string", INIT, "sets tie_word_embeddings = 'yes'", "it needs True", gpt2(lambda c: c.update(tie_word_embeddings="yes"))),
    Row("init-index-not-an-object", INIT, "gpt/model.safetensors.index.json is malformed: the top level must be an object", "save_pretrained", gpt2(model_safetensors_index_json="[1]"), subprocess=True),
    Row("init-index-no-weight-map", INIT, "field weight_map is missing", "save_pretrained", gpt2(model_safetensors_index_json='{"metadata": {}}')),
    Row("init-index-weight-map-a-list", INIT, "field weight_map must be an object, got []", "save_pretrained", gpt2(model_safetensors_index_json='{"weight_map": []}')),
    Row("init-index-shard-escapes", INIT, "must be a plain file name", "each shard must be a file in gpt", gpt2(model_safetensors_index_json='{"weight_map": {"transformer.wte.weight": "../data/meta.json"}}')),
    Row("init-index-shard-not-a-string", INIT, "field transformer.wte.weight must be a plain file name", "got 3", gpt2(model_safetensors_index_json='{"weight_map": {"transformer.wte.weight": 3}}')),
    Row("init-index-shard-missing", INIT, "names the shard model-00002-of-00002.safetensors, which is missing", "copy it there", gpt2(model_safetensors_index_json='{"weight_map": {"transformer.wte.weight": "model-00002-of-00002.safetensors"}}')),
    Row("init-index-shard-lacks-tensor", INIT, "puts transformer.h.7.ln_1.weight in model.safetensors, which does not hold it", "save_pretrained", gpt2(model_safetensors_index_json='{"weight_map": {"transformer.h.7.ln_1.weight": "model.safetensors"}}')),
    Row("init-pickle-as-safetensors", INIT, "gpt/model.safetensors is truncated or not safetensors", "not a safetensors file", gpt2(model_safetensors=EVIL_PICKLE), subprocess=True),
    Row("init-truncated-safetensors", INIT, "gpt/model.safetensors", "not a safetensors file", lambda w: (gpt2()(w), (w / "gpt/model.safetensors").write_bytes((w / "gpt/model.safetensors").read_bytes()[:-100]))),
    Row("init-tensor-wrong-shape", INIT, "does not fit: tok_emb.weight has shape [64, 16], the model from its config.json needs [65, 16]", "save_pretrained", gpt2(lambda c: c.update(vocab_size=65))),
    # --- sampling and evaluation options ------------------------------------------------------
    Row("sample-nan-temperature", [*SAMPLE, "--temperature", "nan"], "--temperature must be 0 (greedy) or between", "got nan", subprocess=True),
    Row("sample-huge-seed", [*SAMPLE, "--seed", "9" * 30], "--seed must be between 0 and 2**63 - 1", "999", subprocess=True),
    Row("sample-top-p-zero", [*SAMPLE, "--top-p", "0"], "--top-p must be in (0, 1]", "got 0"),
    Row("eval-zero-batches", ["eval", "--run", "run", "--max-batches", "0"], "--max-batches must be >= 1", "got 0"),
    Row("sample-run-is-a-file", ["sample", "--run", "data/meta.json"], "is not a run directory", "no config.toml"),
    Row("verify-resume-one-step", ["verify-resume", "--steps", "1"], "--steps must be at least 2", "got 1"),
    Row("verify-resume-no-device", ["verify-resume", "--set", "training.device=cuda:63"], "training.device 'cuda:63'", "use auto, cpu"),
    # --- export: --out never writes into what it must not ------------------------------------
    Row("export-out-is-the-run", [*EXPORT, "run"], "--out run is the run being exported", "pick a new or empty directory"),
    Row("export-out-inside-the-run", [*EXPORT, "run/checkpoints"], "is inside the run being exported (run)", "pick a new or empty directory"),
    Row("export-out-contains-the-run", [*EXPORT, "."], "contains the run being exported", "pick a new or empty directory", subprocess=True),
    Row("export-out-another-run", [*EXPORT, "other"], "--out other is a run directory (it holds", "pick a new or empty directory", lambda w: shutil.copytree(w / "run", w / "other")),
    Row("export-out-a-checkpoint", [*EXPORT, "ckpt"], "--out ckpt is a checkpoint directory", "pick a new or empty directory", lambda w: shutil.copytree(w / CKPT, w / "ckpt")),
    Row("export-out-prepared-data", [*EXPORT, "data"], "--out data is a prepared data directory", "pick a new or empty directory"),
    Row("export-out-a-file", [*EXPORT, "data/meta.json"], "--out data/meta.json is a file, not a directory", "pick a new or empty directory", subprocess=True),
    Row("export-out-under-a-file", [*EXPORT, "data/meta.json/hf"], "is under data/meta.json, which is a file", "pick a new or empty directory"),
    Row("export-out-other-files", [*EXPORT, "notes"], "not empty and not an earlier export (it holds todo.txt)", "pick a new or empty directory", write("notes/todo.txt", "keep me")),
    Row("export-out-export-plus-a-file", [*EXPORT, "hf"], "not an earlier export (it holds README.md)", "pick a new or empty directory", lambda w: [write(f"hf/{n}", "x")(w) for n in ("config.json", "model.safetensors", "README.md")]),
    # --- plugins -------------------------------------------------------------------------------
    Row("plugin-raises-at-import", TRAIN, "plugin 'broken' from broken-plugin 0.1 could not be imported (RuntimeError: boom at import)", "-p no:broken", broken_plugin, subprocess=True, env={"PYTHONPATH": "site", "HOOKLOOP_DISABLE_PLUGIN_AUTOLOAD": ""}),
]  # fmt: skip


def _deny_mkdir(self, *args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied", str(self))


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_the_table_is_large_and_has_a_good_share_of_real_subprocesses():
    assert len(ROWS) >= 40 and len({r.id for r in ROWS}) == len(ROWS)
    assert sum(r.subprocess for r in ROWS) >= 12
    assert sum(not r.id.endswith("-for-real") for r in ROWS) >= 40  # all run as root too


def test_the_gpt2_directory_the_init_rows_break_imports_as_it_is(base, tmp_path, monkeypatch):
    """The init-* rows are refused for what they break, not for a broken fixture."""
    w = tmp_path / "w"
    shutil.copytree(base, w)
    gpt2()(w)
    monkeypatch.chdir(w)
    monkeypatch.setenv("HOOKLOOP_DISABLE_PLUGIN_AUTOLOAD", "1")
    try:
        assert main([*INIT, "--set", 'plugins.disable=["progress", "eval"]']) == 0
    finally:
        for held in list(runlock._held):
            runlock.release_run_dir(held)
    assert (w / "new" / "checkpoints").is_dir()


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
def test_a_bad_input_is_refused_in_a_few_lines_and_changes_nothing(
    row, base, tmp_path, monkeypatch, capsys
):
    if ROOT and row.id.endswith("-for-real"):
        pytest.skip("permissions do not bind root; the patched rows cover this path")
    w = tmp_path / "w"
    shutil.copytree(base, w)
    if row.setup is not None:
        row.setup(w)
    before = _files(w)
    if row.subprocess:
        env = {**os.environ, "HOOKLOOP_DISABLE_PLUGIN_AUTOLOAD": "1", **row.env}
        done = subprocess.run(
            [sys.executable, "-m", "hookloop", *row.args],
            cwd=w,
            env={k: v for k, v in env.items() if v != ""},
            capture_output=True,
            text=True,
            timeout=120,
        )
        status, err = done.returncode, done.stderr
    else:
        monkeypatch.chdir(w)
        monkeypatch.setenv("HOOKLOOP_DISABLE_PLUGIN_AUTOLOAD", "1")
        if row.patch is not None:
            row.patch(monkeypatch, w)
        try:
            status = main(row.args)
        finally:
            monkeypatch.undo()
            for held in list(runlock._held):  # this process is not the run's writer any more
                runlock.release_run_dir(held)
        err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 3, err
    message = lines[-1]
    assert message.startswith("hookloop ") and ": error: " in message, err
    assert row.problem in message, message
    assert row.fix in message, message
    assert not (w / "pwned").exists()  # the pickle was never unpickled
    after = _files(w)
    for name, data in before.items():
        if name.endswith("journal.jsonl"):
            assert after[name].startswith(data), name  # refusals are appended, nothing lost
        else:
            assert after.get(name) == data, f"{name} changed"
    created = sorted(set(after) - set(before) - {"run/journal.jsonl"})
    assert not created, created
