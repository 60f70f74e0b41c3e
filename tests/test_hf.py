"""Hugging Face GPT-2 format: `hookloop export --format hf` loads in transformers with equal
logits and tokenizer ids, and `model.init_from = "hf:PATH"` imports a GPT-2 (made here at
random, nothing downloaded) with equal logits, then fine-tunes it."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hookloop.checkpoint import checkpoint_name, save_checkpoint  # noqa: E402
from hookloop.cli import main  # noqa: E402
from hookloop.lm.config import load_config  # noqa: E402
from hookloop.lm.prepare import prepare_texts  # noqa: E402
from hookloop.lm.recipe import build_run, load_trained  # noqa: E402

TEXT = "".join(f"line {i % 13}: the cat sat on the mat. ünïcode ✓\n" for i in range(300))
TINY = [
    "model.d_model=32",
    "model.n_heads=2",
    "model.n_layers=2",
    "model.d_ff=48",
    "model.max_seq_len=24",
    "data.seq_len=16",
    "data.batch_size=4",
    "training.max_steps=2",
    "training.threads=1",
]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a test that tries to download fails
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    # main() runs in-process: structlog must keep no handle on pytest's captured streams
    monkeypatch.setattr("hookloop.logs.configure_logging", lambda *a, **k: None)


def trained_run(tmp_path, tokenizer, *extra):
    data = tmp_path / "data"
    cut = len(TEXT) * 9 // 10
    prepare_texts(TEXT[:cut], TEXT[cut:], data, tokenizer=tokenizer, bpe_vocab_size=300)
    config = load_config(None, [*TINY, f"data.path={data}", *extra])
    config["plugins"] = {"disable": ["progress", "console", "eval", "checkpoint"]}
    run = build_run(config, tmp_path / "run")
    run.fit()
    save_checkpoint(run.engine, tmp_path / "run" / "checkpoints" / checkpoint_name(2))
    return tmp_path / "run"


@pytest.mark.parametrize(
    ("tokenizer", "extra"),
    [
        ("byte", []),
        ("bpe", ["model.bias=false", "model.activation=gelu_tanh"]),
        ("char", ["model.dropout=0.1"]),
    ],
)
def test_export_loads_in_transformers_with_equal_logits(tmp_path, capsys, tokenizer, extra):
    run_dir = trained_run(tmp_path, tokenizer, *extra)
    out = tmp_path / "hf"
    assert main(["export", str(run_dir), "--format", "hf", "--out", str(out)]) == 0
    assert "from_pretrained" in capsys.readouterr().out
    ours, tok, _, _ = load_trained(run_dir)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(theirs).__name__ == "GPT2LMHeadModel"
    ids = torch.tensor(tok.encode("line 7: the cat ✓\n").tolist()).reshape(1, -1)
    with torch.no_grad():
        expected, got = ours(ids), theirs(ids).logits
    assert torch.allclose(expected, got, atol=1e-5, rtol=0), (expected - got).abs().max()
    generated = theirs.generate(ids, max_new_tokens=5, do_sample=False)
    assert generated.shape == (1, ids.shape[1] + 5)
    assert generated[0].tolist() == ours.generate(ids[0], 5, temperature=0)

    if tokenizer == "char":  # the documented loader: hookloop's own tokenizer file
        assert not (out / "tokenizer.json").exists()
        chars = json.loads((out / "hookloop_tokenizer.json").read_text())["chars"]
        assert [chars.index(c) for c in "line 7"] == tok.encode("line 7").tolist()
        return
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok("line 7: ünïcode ✓\n")["input_ids"] == tok.encode("line 7: ünïcode ✓\n").tolist()
    assert hf_tok.decode(generated[0]) == tok.decode(generated[0].tolist())


def test_a_char_export_over_a_byte_export_leaves_no_tokenizer_of_the_old_one(tmp_path):
    """`AutoTokenizer` must not load the byte tokenizer an earlier export left for a model
    whose ids are characters."""
    out = tmp_path / "hf"
    byte_run = trained_run(tmp_path / "b", "byte")
    assert main(["export", str(byte_run), "--out", str(out)]) == 0
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
    char_run = trained_run(tmp_path / "c", "char")
    assert main(["export", str(char_run), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "hookloop_tokenizer.json",
        "model.safetensors",
    ]
    assert json.loads((out / "hookloop_tokenizer.json").read_text())["kind"] == "char"


def test_a_bias_free_model_exports_zero_biases(tmp_path):
    run_dir = trained_run(tmp_path, "byte", "model.bias=false")
    main(
        ["export", str(run_dir / "checkpoints" / checkpoint_name(2)), "--out", str(tmp_path / "o")]
    )
    from safetensors.torch import load_file

    state = load_file(tmp_path / "o" / "model.safetensors")
    biases = [k for k in state if k.endswith(".bias")]
    assert len(biases) == 2 * 6 + 1  # six per block, plus ln_f
    assert all(not state[k].any() for k in biases)


def _run_and_neighbours(root):
    """A run with a checkpoint, prepared data beside it, and an earlier export: as files only
    (the target check reads names, not contents)."""
    for rel in [
        "runs/r/config.toml",
        "runs/r/tokenizer.json",
        "runs/r/journal.jsonl",
        "runs/r/checkpoints/latest",
        "runs/r/checkpoints/step-00000002/state.json",
        "runs/r/checkpoints/step-00000002/model.safetensors",
        "data/meta.json",
        "data/train.bin",
        "data/val.bin",
        "data/tokenizer.json",
        "old/config.json",
        "old/model.safetensors",
        "old/tokenizer.json",
        "old/.model.safetensors.tmp-123-abcd1234",  # an interrupted export's leftover
        "notes/todo.txt",
        "only-config/config.json",
    ]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    (root / "empty").mkdir()
    return root / "runs" / "r"


@pytest.mark.parametrize("out", ["new/deeper/hf", "empty", "old", "runs/hf"])
def test_export_may_write_a_new_or_empty_directory_or_an_earlier_export(tmp_path, out):
    from hookloop.lm.export_target import check_export_target

    check_export_target(tmp_path / out, run_dir=_run_and_neighbours(tmp_path))


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("runs/r", "is the run being exported"),
        ("runs/r/checkpoints", "is inside the run being exported"),
        ("runs/r/hf", "is inside the run being exported"),
        ("runs", "contains the run being exported"),
        ("link-to-run", "is the run being exported"),  # links are followed
        ("runs/r/checkpoints/step-00000002", "is inside the run being exported"),
        ("copy-of-run", "is a run directory (it holds checkpoints, config.toml, journal.jsonl)"),
        ("copy-of-run/checkpoints", "is a checkpoint directory"),
        ("copy-of-run/checkpoints/step-00000002", "is a checkpoint directory"),
        ("data", "is a prepared data directory (it holds meta.json, train.bin, val.bin)"),
        ("data/meta.json", "is a file, not a directory"),
        ("data/meta.json/hf", "is under"),
        ("dangling", "is a file, not a directory"),
        ("notes", "is not empty and not an earlier export (it holds todo.txt)"),
        ("half-export", "not an earlier export (it holds model.safetensors)"),
        ("only-config", "not an earlier export (it holds config.json)"),  # no weights
    ],
)
def test_export_refuses_to_write_into_what_it_must_not(tmp_path, out, message):
    import shutil

    from hookloop.errors import ConfigError
    from hookloop.lm.export_target import check_export_target

    run_dir = _run_and_neighbours(tmp_path)
    shutil.copytree(run_dir, tmp_path / "copy-of-run")
    (tmp_path / "link-to-run").symlink_to(run_dir)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "half-export").mkdir()
    (tmp_path / "half-export" / "model.safetensors").mkdir()  # a folder under an export's name
    (tmp_path / "half-export" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="pick a new or empty directory") as caught:
        check_export_target(tmp_path / out, run_dir=run_dir)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_export_of_a_checkpoint_into_its_own_run_is_refused_and_changes_nothing(tmp_path, capsys):
    run_dir = trained_run(tmp_path, "byte")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    checkpoint = run_dir / "checkpoints" / checkpoint_name(2)
    assert main(["export", str(checkpoint), "--out", str(run_dir)]) == 2
    assert "is the run being exported" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def random_gpt2(directory, activation="gelu_new"):
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=257,  # the byte tokenizer: 256 bytes and an end-of-text id
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_inner=None,
        activation_function=activation,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # non-trivial biases and norms, so a mix-up shows
        for name, p in model.named_parameters():
            if "ln_" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(directory)
    return model


def test_import_gpt2_equal_logits_then_fine_tune(tmp_path):
    theirs = random_gpt2(tmp_path / "gpt2")
    data = tmp_path / "data"
    prepare_texts(TEXT[:6000], TEXT[6000:], data, tokenizer="byte")
    config = load_config(
        None,
        [
            f"model.init_from=hf:{tmp_path / 'gpt2'}",
            f"data.path={data}",
            "data.seq_len=16",
            "data.batch_size=8",
            "training.max_steps=15",
            "training.threads=1",
            "optimizer.lr=3e-3",
            "plugins.schedule.warmup_steps=1",
        ],
    )
    m = config["model"]
    assert (m["d_model"], m["n_heads"], m["n_layers"], m["d_ff"], m["max_seq_len"]) == (
        32,
        4,
        2,
        128,
        32,
    )
    assert m["activation"] == "gelu_tanh" and m["vocab_size"] == 257
    config["plugins"] = {"disable": ["progress", "console", "eval", "checkpoint"]}
    run = build_run(config, tmp_path / "run")
    model = run.engine.model.eval()
    ids = torch.tensor(run.tokenizer.encode("line 3: the cat").tolist()).reshape(1, -1)
    with torch.no_grad():
        diff = (model(ids) - theirs(ids).logits).abs().max()
    assert diff <= 1e-5
    before = run.engine.evaluate(max_batches=4)["val_loss"]
    run.fit()
    assert run.engine.evaluate(max_batches=4)["val_loss"] < before - 0.1


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("missing", "is not a directory"),
        ("not-gpt2", "only GPT-2-format models"),
        ("activation", "field activation_function must be one of gelu, gelu_new"),
        ("pickle-only", "has no model.safetensors"),
    ],
)
def test_import_problems_are_one_line_errors(tmp_path, capsys, problem, message):
    directory = tmp_path / "model"
    if problem != "missing":
        random_gpt2(directory)
        config = json.loads((directory / "config.json").read_text())
        if problem == "not-gpt2":
            config["model_type"] = "llama"
        if problem == "activation":
            config["activation_function"] = "relu"
        (directory / "config.json").write_text(json.dumps(config))
        if problem == "pickle-only":
            (directory / "model.safetensors").rename(directory / "pytorch_model.bin")
    capsys.readouterr()  # save_pretrained's progress bar
    args = ["--set", f"model.init_from=hf:{directory}", "--set", "data.seq_len=16"]
    status = main(["train", *args, "--runs", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err
