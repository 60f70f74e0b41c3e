"""The nanoGPT benchmark script still runs end to end (a short run on a small text).

Only the plumbing is checked here: the three variants train, both evaluations run and the
tables come out. The losses it reports and their targets live in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import math
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
