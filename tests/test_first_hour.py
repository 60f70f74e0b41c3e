"""A new user's first hour, as README.md and the tutorial lay it out, in a fresh HOME and
working directory: train, sample with the command the run printed, eval from another
directory, plot, verify-resume with no arguments, doctor, and the usual first mistakes.

The `hookloop` script is run by its path with its directory not on PATH, as right after
README's set-up command (before the venv is activated), so every command a run prints must
work exactly as printed. Any non-zero exit or traceback fails the test.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hookloop.testing import TINY_RUN

SCRIPT = Path(sys.executable).parent / "hookloop"
TINY = [arg for item in TINY_RUN for arg in ("--set", item)]


class Shell:
    """Runs commands in a working directory with a clean environment and HOME."""

    def __init__(self, home: Path, cwd: Path) -> None:
        self.cwd = cwd
        self.env = {
            "HOME": str(home),
            "PATH": "/usr/bin:/bin",  # the venv is not activated
            "LANG": os.environ.get("LANG", "C.UTF-8"),
        }

    def run(self, *argv: str | os.PathLike[str], cwd: Path | None = None, ok: bool = True) -> str:
        start = time.monotonic()
        result = subprocess.run(
            [os.fspath(a) for a in argv],
            cwd=cwd or self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=300,
        )
        what = f"`{shlex.join(os.fspath(a) for a in argv)}` (exit {result.returncode})"
        print(f"{what}: {time.monotonic() - start:.1f}s")
        assert "Traceback" not in result.stdout, f"{what}:\n{result.stdout}"
        assert (result.returncode == 0) == ok, f"{what}:\n{result.stdout}"
        return result.stdout

    def hookloop(self, *args: str | os.PathLike[str], **kwargs: object) -> str:
        return self.run(SCRIPT, *args, **kwargs)  # type: ignore[arg-type]


def printed(output: str, prefix: str) -> list[str]:
    """The command a line starting with `prefix` tells the user to run."""
    line = next(ln for ln in output.splitlines() if ln.startswith(prefix))
    return shlex.split(line.removeprefix(prefix))


@pytest.mark.slow
def test_first_hour(tmp_path: Path) -> None:
    home, work, elsewhere = tmp_path / "home", tmp_path / "work", tmp_path / "elsewhere"
    for d in (home, work, elsewhere):
        d.mkdir()
    sh = Shell(home, work)

    # a first mistake leaves nothing behind
    out = sh.hookloop("train", "--set", "data.path=data/missing", ok=False)
    assert "data/missing" in out and not (work / "runs").exists()

    # README: train; the closing lines say how to sample, in words that work as printed
    out = sh.hookloop("train", *TINY)
    assert "evaluating on the full validation split" in out
    assert "plugin_cost_ms_per_step" not in out
    command = printed(out, "sample from it: ")
    assert command[0] == str(SCRIPT)  # not a bare `hookloop` the shell cannot find
    assert sh.run(*command, "--max-new-tokens", "20").strip()
    run_dir = work / command[command.index("--run") + 1]

    # sample and eval from another directory; plot and sample default to the latest run
    out = sh.hookloop("eval", "--run", run_dir, cwd=elsewhere)
    assert "val_loss" in out
    assert "metrics.png" in sh.hookloop("plot")
    out = sh.hookloop("sample", "--checkpoint", "step-00099999", ok=False)
    assert "step-00000004" in out  # the checkpoints it does have

    # the --help examples of verify-resume and doctor, exactly as shown
    out = sh.hookloop("verify-resume")
    assert "result: EQUAL" in out and "exception" not in out
    sh.hookloop("doctor", *TINY)

    # a raw text file as data.path is prepared on the fly (once) and trained on
    (work / "input.txt").write_text("To be, or not to be, that is the question.\n" * 300)
    out = sh.hookloop("train", "--set", "data.path=input.txt", *TINY)
    assert "preparing_text" in out and "hookloop prepare" not in out
    out = sh.hookloop("train", "--set", "data.path=input.txt", *TINY)
    assert "preparing_text" not in out  # reused from the cache


def test_a_plugin_package_shaped_as_the_page_shows_installs_after_a_run_made_runs(tmp_path):
    """writing-a-plugin.md's pyproject.toml (the example package's, which the docs test
    holds the page to) builds in a folder where `hookloop train` has made `runs/` and a
    prepared `data/` folder sits: it names its package instead of letting setuptools guess."""
    import shutil

    example = Path(__file__).resolve().parents[1] / "examples" / "hookloop-example"
    project = tmp_path / "my-plugin"
    shutil.copytree(example, project, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    for folder in ("runs/20260101-120000", "data/shakespeare"):
        (project / folder).mkdir(parents=True)
        (project / folder / "config.toml").write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path / "wheels"), str(project)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "wheels").glob("hookloop_example-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("hookloop_example/") for n in names)
    assert not any(n.startswith(("runs/", "data/")) for n in names)
