"""Mixing several prepared corpora by weight: proportions, exact resumes, per-source loss."""

from __future__ import annotations

import csv

import pytest
import torch

from hookloop.errors import ConfigError, DataError
from hookloop.lm.config import default_config, dumps_toml, load_config
from hookloop.lm.data import TokenDataset
from hookloop.lm.mixture import MixtureDataset, check_sources
from hookloop.lm.prepare import prepare_texts
from hookloop.lm.recipe import build_run

LETTERS = {"a": "a", "b": "b", "c": "c"}


@pytest.fixture
def corpora(tmp_path):
    """Three byte-level corpora, each of one repeated letter, so a window names its source."""
    dirs = {}
    for name, letter in LETTERS.items():
        dirs[name] = tmp_path / name
        prepare_texts(letter * 5000, letter * 600, dirs[name], tokenizer="byte")
    return dirs


def mixture(corpora, weights, *, seed=0, batch_size=4, batches_per_epoch=0):
    sources = {
        name: TokenDataset(corpora[name] / "train.bin", seq_len=8, batch_size=batch_size)
        for name in weights
    }
    return MixtureDataset(sources, weights, batches_per_epoch=batches_per_epoch, seed=seed)


def test_rows_follow_the_weights_over_1000_steps(corpora):
    weights = {"a": 0.6, "b": 0.3, "c": 0.1}
    data = mixture(corpora, weights, batches_per_epoch=1000)
    counts = dict.fromkeys(LETTERS, 0)
    for inputs, targets in data.iter_epoch(0):
        assert torch.equal(inputs[:, 1:], targets[:, :-1])
        for row in inputs:
            assert len(set(row.tolist())) == 1  # a window comes from one source
            counts[chr(int(row[0]))] += 1
    total = sum(counts.values())
    assert total == 4000
    for name, weight in weights.items():
        assert abs(counts[name] / total - weight) < 0.03, counts


def test_a_batch_is_a_pure_function_of_seed_and_step_so_resumes_are_exact(corpora):
    weights = {"a": 1.0, "b": 2.0}
    straight = [
        b
        for epoch in range(2)
        for b in mixture(corpora, weights, batches_per_epoch=7).iter_epoch(epoch)
    ]
    resumed = list(mixture(corpora, weights, batches_per_epoch=7).iter_epoch(0, 4))
    resumed += list(mixture(corpora, weights, batches_per_epoch=7).iter_epoch(1, 0))
    for (x, y), (u, v) in zip(straight[4:], resumed, strict=True):
        assert torch.equal(x, u) and torch.equal(y, v)
    other = list(mixture(corpora, weights, seed=1, batches_per_epoch=7).iter_epoch(0))
    assert not all(torch.equal(x, u) for (x, _), (u, _) in zip(straight[:7], other, strict=True))
    assert len(mixture(corpora, weights)) == (4999 // 8 * 2) // 4  # the windows' worth


@pytest.fixture
def varied(tmp_path):
    """Two byte-level corpora whose windows tell both the source and the offset apart."""
    texts = {"a": "abcdefghijklmnopqrstuvw", "b": "0123456789ABCDEFGHIJKLMNOPQRSTU"}
    dirs = {}
    for name, period in texts.items():
        dirs[name] = tmp_path / f"varied-{name}"
        prepare_texts(period * 200, period * 30, dirs[name], tokenizer="byte")
    return dirs


def ranked(corpora, *, batch_size, rank=0, world_size=1, batches_per_epoch=0):
    sources = {
        name: TokenDataset(
            corpora[name] / "train.bin",
            seq_len=8,
            batch_size=batch_size,
            rank=rank,
            world_size=world_size,
        )
        for name in ("a", "b")
    }
    weights = {"a": 0.6, "b": 0.4}
    return MixtureDataset(sources, weights, batches_per_epoch=batches_per_epoch, seed=5)


@pytest.mark.parametrize("batches_per_epoch", [0, 7])
def test_two_ranks_read_slices_of_the_one_rank_batch_of_twice_the_size(varied, batches_per_epoch):
    """2 ranks x B read, batch for batch and in rank order, the rows 1 rank x 2B reads, from
    the start and from a resumed position; an epoch is counted in global batches on both."""
    one = ranked(varied, batch_size=6, batches_per_epoch=batches_per_epoch)
    ranks = [
        ranked(varied, batch_size=3, rank=r, world_size=2, batches_per_epoch=batches_per_epoch)
        for r in (0, 1)
    ]
    windows = sum(ds.num_windows for ds in one.sources.values())
    assert len(one) == len(ranks[0]) == len(ranks[1]) == (batches_per_epoch or windows // 6)
    for epoch, start in ((0, 0), (1, 2)):
        whole = list(one.iter_epoch(epoch, start))
        parts = [list(d.iter_epoch(epoch, start)) for d in ranks]
        assert len(whole) == len(parts[0]) == len(parts[1]) == len(one) - start
        for (x, y), (x0, y0), (x1, y1) in zip(whole, *parts, strict=True):
            assert x0.shape == x1.shape == (3, 8)
            assert torch.equal(x, torch.cat([x0, x1])) and torch.equal(y, torch.cat([y0, y1]))
    # the ranks read different rows (identical batches on every rank were the bug)
    firsts = [next(iter(d)) for d in ranks]
    assert not torch.equal(firsts[0][0], firsts[1][0])


def test_a_rank_resumes_its_own_rows_exactly(varied):
    def rank1():
        return ranked(varied, batch_size=3, rank=1, world_size=2, batches_per_epoch=7)

    straight = [b for epoch in range(2) for b in rank1().iter_epoch(epoch)]
    resumed = list(rank1().iter_epoch(0, 4)) + list(rank1().iter_epoch(1, 0))
    assert len(resumed) == len(straight) - 4
    for (x, y), (u, v) in zip(straight[4:], resumed, strict=True):
        assert torch.equal(x, u) and torch.equal(y, v)


def test_sources_read_with_different_ranks_or_batches_are_refused(varied):
    path = varied["a"] / "train.bin"
    for other in [dict(batch_size=4), dict(batch_size=3, rank=1, world_size=2)]:
        sources = {
            "a": TokenDataset(path, seq_len=8, batch_size=3),
            "b": TokenDataset(path, seq_len=8, **other),
        }
        with pytest.raises(ConfigError, match="one seq_len, batch_size, rank and world_size"):
            MixtureDataset(sources, {"a": 1, "b": 1})


def test_check_sources():
    ok = check_sources([{"path": "data/x", "weight": 2}, {"path": "other/x", "name": "y"}])
    assert ok == [
        {"path": "data/x", "weight": 2.0, "name": "x"},
        {"path": "other/x", "weight": 1.0, "name": "y"},
    ]
    for bad, message in [
        ("data/x", "must be a list"),
        ([{"path": "d", "weight": 0}], r"data.sources\[0\].weight must be a finite number > 0"),
        ([{"path": "d", "weight": -2.5}], r"weight must be a finite number > 0.*got -2.5"),
        ([{"path": "d", "weight": float("inf")}], r"weight must be a finite number > 0.*got inf"),
        ([{"path": "d", "weight": float("nan")}], r"weight must be a finite number > 0.*got nan"),
        ([{"path": "d", "weight": 10**400}], r"weight must be a finite number > 0"),
        (
            [{"path": "a/d", "weight": 1e308}, {"path": "b/e", "weight": 1e308}],
            r"weights sum to more than the largest float \(1e\+308, 1e\+308\); scale them",
        ),
        ([{"path": "d", "weight": True}], "must be a number > 0"),
        ([{"weight": 1}], r"data.sources\[0\].path must be"),
        ([{"path": "d", "wieght": 1}], "unknown key"),
        ([{"path": "a/d"}, {"path": "b/d"}], r"data.sources\[1\].name 'd' must be a unique"),
        (["d"], "must be a table"),
    ]:
        with pytest.raises(ConfigError, match=message):
            check_sources(bad)


def test_the_dataset_itself_refuses_weights_it_cannot_normalise(corpora):
    for weights in ({"a": 1e308, "b": 1e308}, {"a": float("inf"), "b": 1.0}, {"a": 0.0, "b": 0.0}):
        with pytest.raises(ConfigError, match="finite number > 0, and their sum finite"):
            mixture(corpora, weights)


def test_sources_in_a_config_file_round_trip(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        '[data]\nsources = [{path = "d/a", weight = 0.7}, {path = "d/b", weight = 0.3}]\n'
        "[training]\nmax_steps = 5\n"
    )
    config = load_config(path)
    assert [s["name"] for s in config["data"]["sources"]] == ["a", "b"]
    (tmp_path / "again.toml").write_text(dumps_toml(config))
    assert load_config(tmp_path / "again.toml")["data"]["sources"] == config["data"]["sources"]
    path.write_text('[data]\npath = "x"\nsources = [{path = "d/a"}]\n')
    with pytest.raises(ConfigError, match="leave data.path empty"):
        load_config(path)


def lm_config(sources):
    config = default_config()
    config["data"].update(sources=check_sources(sources), seq_len=8, batch_size=4, val_batches=2)
    config["model"].update(d_model=16, n_heads=2, n_layers=1, d_ff=32, max_seq_len=8)
    config["training"].update(max_steps=3, device="cpu")
    config["plugins"] = {
        "enable": [],
        "disable": ["eval", "console", "progress", "csv", "checkpoint"],
    }
    return config


def test_a_run_over_sources_reports_each_sources_validation_loss(corpora, tmp_path):
    config = lm_config(
        [{"path": str(corpora["a"]), "weight": 0.5}, {"path": str(corpora["b"]), "weight": 0.5}]
    )
    config["plugins"] = {"disable": ["console", "progress", "checkpoint"], "eval": {"every": 2}}
    run = build_run(config, tmp_path / "run")
    run.fit()  # evaluates at step 2 (after_step) and at the end (on_fit_end)
    metrics = run.engine.evaluate()
    assert {"val_loss", "val_loss/a", "val_loss/b"} <= set(metrics)
    assert metrics["val_loss/a"] != metrics["val_loss/b"]
    assert (tmp_path / "run" / "tokenizer.json").is_file()
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["val_loss"]]
    assert [r["step"] for r in rows] == ["2", "3"]
    assert all(float(r["val_loss/a"]) > 0 and float(r["val_loss/b"]) > 0 for r in rows)


def test_sources_must_share_a_tokenizer(corpora, tmp_path):
    prepare_texts("xyz" * 500, "xyz" * 100, tmp_path / "chars", tokenizer="char")
    config = lm_config([{"path": str(corpora["a"])}, {"path": str(tmp_path / "chars")}])
    with pytest.raises(DataError, match="different tokenizers"):
        build_run(config)
