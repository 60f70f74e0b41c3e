"""README's commands and CI stay in step."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    (test_line,) = [line for line in readme.splitlines() if line.rstrip().endswith("pytest -q")]
    test_command = test_line.split("&& ")[-1].strip()
    assert test_command in ci.splitlines()
    assert "pip install -q torch==2.13.0" in ci
    assert "hookloop train" in readme
