"""The nanoGPT benchmark script still runs end to end (a short run on a small text).

Only the plumbing is checked here: the three variants train, both evaluations run and the
tables come out. The losses it reports and their targets live in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "nanogpt_shakespeare.py"


@pytest.mark.slow
def test_nanogpt_benchmark_runs_all_three_variants(tmp_path):
    text = tmp_path / "verse.txt"
    lines = [f"Line {i}: to be, or not to be, that is the question {i % 7}." for i in range(3000)]
    text.write_text("\n".join(lines), encoding="utf-8")
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--text", str(text), "--steps", "101", "--seeds", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = re.findall(
        r"^\| (raw|same|tuned) \| 3 \| [\d.]+ \| [\d,]+ \| ([\d.]+) \| ([\d.]+) \|$",
        out.stdout,
        flags=re.MULTILINE,
    )
    assert [r[0] for r in rows] == ["raw", "same", "tuned"], out.stdout
    vocab = len(set(text.read_text(encoding="utf-8")))
    for _, full, estimate in rows:  # 101 steps take every variant well below a uniform guess
        assert float(full) < math.log(vocab) - 1
        assert float(estimate) < math.log(vocab) - 1
    assert re.search(r"^\| tuned \| 1 \| .* \| [\d.]+ \|$", out.stdout, flags=re.MULTILINE)


def test_unknown_variant_is_one_clear_error():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--variants", "raw,fast"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "unknown variant(s) fast; choose from raw, same, tuned" in out.stderr
    assert "Traceback" not in out.stderr


def test_engine_versions_compares_this_tree_with_a_commit():
    script = SCRIPT.parent / "engine_versions.py"
    out = subprocess.run(
        [sys.executable, str(script), "--ref", "HEAD", "--steps", "120", "--rounds", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=SCRIPT.parents[1],
    )
    if out.returncode != 0 and "not a git repository" in out.stderr:
        pytest.skip("not a git checkout")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = re.findall(r"^\| (raw|ref|tree) \| ([\d.]+) \(", out.stdout, flags=re.MULTILINE)
    assert [r[0] for r in rows] == ["raw", "ref", "tree"], out.stdout
    assert all(float(us) > 0 for _, us in rows)


def test_the_mutation_script_names_existing_core_modules_and_tests(tmp_path):
    import runpy

    root = SCRIPT.parents[1]
    mutation = runpy.run_path(str(root / "benchmarks" / "mutation.py"), run_name="mutation")
    fast_tests = mutation["FAST_TESTS"]
    core = {"engine/engine.py", "engine/dispatch.py", "engine/loading.py"}
    core |= {f"engine/checkpoint/{p.name}" for p in (root / "engine/checkpoint").glob("[!_]*.py")}
    assert set(fast_tests) == core  # every core module has its fast tests, and only those
    assert all((root / t).is_file() for tests in fast_tests.values() for t in tests)
    mutation["scratch_copy"](tmp_path, "engine/dispatch.py", fast_tests["engine/dispatch.py"])
    assert (tmp_path / "hookloop" / "dispatch.py").is_file()
    assert (tmp_path / "hookloop" / "plugins" / "clip.py").is_file()
    assert 'source_paths = ["hookloop/dispatch.py"]' in (tmp_path / "pyproject.toml").read_text()


PEERS = SCRIPT.parent / "peers.py"


def run_peers(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, str(PEERS), "--steps", "12", "--rounds", "1", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def check_table(stdout: str, model: str, variants: list[str]) -> None:
    """The table of `model` names every variant, and all of them end at the same loss."""
    table = stdout.split(f"### {model}: 12 steps x 1 interleaved rounds")[1]
    rows = re.findall(r"^\| (\w+) \| ([\d.]+) \(.* \| ([\d.]+) \|$", table, flags=re.M)
    assert [r[0] for r in rows[: len(variants)]] == variants, stdout
    assert len({r[2] for r in rows[: len(variants)]}) == 1, stdout  # same work, same loss
    gap = re.search(r"every variant and round within (\S+) of raw's", table)
    assert gap and float(gap[1]) < 1e-5, stdout


def test_peers_runs_raw_and_hookloop_side_by_side_and_they_end_at_one_loss():
    variants = ["raw", "hookloop", "defaults"]
    out = run_peers("--model", "mlp", "--probe-rounds", "0", "--variants", ",".join(variants))
    check_table(out.stdout, "mlp", variants)


def test_a_peers_probe_times_the_import_and_the_first_step():
    import json
    import time

    spawned = time.time()
    out = run_peers("--probe", "hookloop", "--spawned", repr(spawned))
    seconds = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(seconds) == {"import", "first_step"}
    assert 0 < seconds["import"] < seconds["first_step"] < time.time() - spawned


@pytest.mark.parametrize("peer", ["ignite", "lightning"])
def test_peers_runs_a_peer_framework_on_the_same_work(peer):
    import importlib.util

    if importlib.util.find_spec(peer) is None:
        pytest.skip(f"{peer} is not installed (the bench extra)")
    out = run_peers("--model", "mlp", "--probe-rounds", "0", "--variants", f"raw,{peer}")
    check_table(out.stdout, "mlp", ["raw", peer])


def test_peers_without_the_bench_extra_is_one_clear_line(tmp_path):
    fake = tmp_path / "ignite"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('No module named ignite')\n")
    out = subprocess.run(
        [sys.executable, str(PEERS), "--variants", "raw,hookloop,ignite"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "peers.py: ignite not installed: pip install -e '.[bench]' (or leave them out of --variants)"
    ]
    assert out.stdout == ""
