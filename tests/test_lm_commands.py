"""The recipe's commands as subprocesses: prepare, train, sample, eval.

The first test runs each of them as a real `python -m hookloop` (`real=True`): the start-up and
every import a command needs. The others fork from the `hookloop_cli` server."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from hookloop.cli import main


def test_prepare_then_train_then_sample_then_eval(
    hookloop_cli, tiny_lm_args, tmp_path, monkeypatch, capsys
):
    text = "".join(f"line {i % 17}: the cat sat on the mat.\n" for i in range(600))
    (tmp_path / "input.txt").write_text(text)
    out = hookloop_cli("prepare", "input.txt", "--out", "data", cwd=tmp_path, real=True)
    assert out.returncode == 0, out.stderr
    assert "-m hookloop train --set data.path=data\n" in out.stdout  # works as printed
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["tokenizer"] == "char"

    tiny = [*tiny_lm_args, "--set", "training.max_steps=3", "--set", "data.path=data"]
    out = hookloop_cli("train", *tiny, cwd=tmp_path, real=True)
    assert out.returncode == 0, out.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert f"run directory: runs/{run_dir.name}" in out.stdout
    # the closing command works as printed (here: python -m hookloop, as it was started)
    assert f"-m hookloop sample --run runs/{run_dir.name}\n" in out.stdout
    assert "validation loss" in out.stdout
    assert (run_dir / "config.toml").is_file() and (run_dir / "tokenizer.json").is_file()
    assert f"loss curves: runs/{run_dir.name}/metrics.png" in out.stdout
    assert (run_dir / "metrics.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    # the checkpoint plugin (on by default) saved the final weights and the `latest` pointer
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    greedy = ["sample", "--prompt", "line 1", "--max-new-tokens", "20", "--temperature", "0"]
    out = hookloop_cli(*greedy, cwd=tmp_path, real=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("line 1") and len(out.stdout.rstrip("\n")) >= 6
    # The variations run in-process (no torch import each); logging stays unconfigured so
    # structlog keeps no handle on pytest's captured stderr.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("hookloop.logs.configure_logging", lambda *a, **k: None)
    assert main([*greedy, "--run", str(run_dir)]) == 0
    assert capsys.readouterr().out == out.stdout
    seeded = []
    for _ in range(2):
        assert main(["sample", "--seed", "3", "--top-k", "5", "--top-p", "0.9"]) == 0
        seeded.append(capsys.readouterr().out)
    assert seeded[0] == seeded[1]
    assert main(["sample", "--prompt", "\u00e9"]) == 2
    assert "not in the vocabulary" in capsys.readouterr().err
    assert main(["sample", "--top-p", "2"]) == 2
    assert "--top-p must be in (0, 1]" in capsys.readouterr().err

    out = hookloop_cli("eval", cwd=tmp_path, real=True)
    assert out.returncode == 0, out.stderr
    assert "val_loss" in out.stdout and latest in out.stdout
    weights = load_file(run_dir / "checkpoints" / latest / "model.safetensors")
    assert "tok_emb.weight" in weights and not any("head" in k for k in weights)


def test_prepare_with_separate_val_file_byte_and_errors(one_line_error, hookloop_cli, tmp_path):
    (tmp_path / "train.txt").write_text("hello world\n" * 50)
    (tmp_path / "val.txt").write_text("hello there\n" * 10)
    out = hookloop_cli(
        "prepare",
        "train.txt",
        "--val",
        "val.txt",
        "--tokenizer",
        "byte",
        "--out",
        "d",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert meta["train_tokens"] == 600 and meta["val_tokens"] == 120 and meta["vocab_size"] == 257
    assert meta["eot_id"] == 256  # the end-of-text id between documents
    one_line_error(
        hookloop_cli("prepare", "train.txt", "--out", "d", cwd=tmp_path), "already exists"
    )
    one_line_error(
        hookloop_cli("prepare", "nope.txt", "--out", "e", cwd=tmp_path), "does not exist"
    )
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    one_line_error(hookloop_cli("prepare", "bin.txt", "--out", "e", cwd=tmp_path), "is not UTF-8")
    (tmp_path / "docs.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n{"text": ""}\n')
    one_line_error(
        hookloop_cli("prepare", "docs.jsonl", "--out", "e", cwd=tmp_path), "docs.jsonl line 3"
    )
    assert not (tmp_path / "e").exists() and not list(tmp_path.glob(".e.partial-*"))


def test_train_config_errors_are_one_line(one_line_error, hookloop_cli, tmp_path):
    one_line_error(
        hookloop_cli("train", "--set", "model.n_layer=2", cwd=tmp_path),
        "did you mean model.n_layers?",
    )
    one_line_error(
        hookloop_cli("train", "--set", "data.path=missing", cwd=tmp_path),
        "not a prepared data directory",
    )
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_sample_without_runs_says_what_to_do(one_line_error, hookloop_cli, tmp_path):
    one_line_error(hookloop_cli("sample", cwd=tmp_path), "no runs under runs/")


@pytest.mark.slow
def test_default_train_runs_on_the_stdlib_corpus(hookloop_cli, tmp_path):
    """`hookloop train` with no data arguments (fewer steps, to keep the suite fast)."""
    out = hookloop_cli(
        "train",
        "--set",
        "training.max_steps=20",
        cwd=tmp_path,
        env={"HOOKLOOP_CACHE": str(tmp_path / "cache")},
        timeout=300,  # a loaded 2-core machine: the corpus is prepared first
    )
    assert out.returncode == 0, out.stderr
    assert "char tokens" in out.stdout and "-m hookloop sample --run runs/" in out.stdout
    (prepared,) = (tmp_path / "cache").iterdir()
    meta = json.loads((prepared / "meta.json").read_text())
    assert meta["vocab_size"] < 128 and meta["train_tokens"] > 1_000_000


def test_a_failed_train_leaves_no_empty_runs_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("hookloop.logs.configure_logging", lambda *a, **k: None)
    assert main(["train", "--set", "data.path=nowhere"]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    (tmp_path / "runs").mkdir()  # a runs/ the user had stays
    assert main(["train", "--set", "data.path=nowhere"]) == 2
    assert (tmp_path / "runs").is_dir() and not list((tmp_path / "runs").iterdir())


def test_the_final_evaluation_announces_itself(make_engine, capsys):
    from hookloop.commands._progress import evaluate_with_progress

    engine = make_engine()
    metrics = evaluate_with_progress(engine)
    assert capsys.readouterr().out == "evaluating on the full validation split (2 batches)...\n"
    assert metrics == engine.evaluate()
    evaluate_with_progress(engine, max_batches=1)
    assert capsys.readouterr().out == "evaluating on the validation split (1 batch)...\n"
    assert isinstance(engine.val_data, list)  # put back as it was
