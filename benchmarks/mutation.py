"""Mutation testing of the core with mutmut: does the fast test suite notice each small bug?

    pip install -e ".[mutation]"
    .venv/bin/python benchmarks/mutation.py engine/dispatch.py          # one module
    .venv/bin/python benchmarks/mutation.py engine/checkpoint/atomic.py --tests tests/test_atomic.py
    .venv/bin/python benchmarks/mutation.py --list                      # modules and their tests

mutmut rewrites every function of a module into variants that each carry one small change
(an operator flipped, a constant changed, an argument dropped...), runs the fast tests once
to learn which tests reach which function, then, for each variant, only those tests: a
variant is *killed* when one of them fails and *survives* when they all pass. The score is
killed / (killed + survived + not reached). mutmut mutates function bodies only, not
module-level constants.

mutmut needs the package importable under its own name from the folder it runs in, and this
repository maps `hookloop` to `engine/` (and `hookloop.plugins` to `plugins/`); so the script
copies `engine/` as `hookloop/` (with `plugins/` inside it) and `tests/` into a scratch
folder, runs mutmut there, and never touches the checkout. It prints the score and the diff of
every surviving variant; `--keep` leaves the folder, where `mutmut results` and `mutmut show
NAME` work. One module at a time suits a small machine: a module of a few hundred lines takes
minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_TESTS = [
    "tests/test_atomic.py",
    "tests/test_checkpointing.py",
    "tests/test_tensorfile.py",
]
FAST_TESTS: dict[str, list[str]] = {
    "engine/dispatch.py": ["tests/test_dispatch.py", "tests/test_engine.py"],
    "engine/loading.py": ["tests/test_loading.py"],
    "engine/engine.py": ["tests/test_engine.py", "tests/test_dispatch.py"],
    "engine/checkpoint/atomic.py": CHECKPOINT_TESTS,
    "engine/checkpoint/layout.py": CHECKPOINT_TESTS,
    "engine/checkpoint/write.py": CHECKPOINT_TESTS,
    "engine/checkpoint/read.py": CHECKPOINT_TESTS,
    "engine/checkpoint/capture.py": CHECKPOINT_TESTS,
    "engine/checkpoint/rng.py": CHECKPOINT_TESTS,
    "engine/checkpoint/tensorfile.py": CHECKPOINT_TESTS,
    "engine/checkpoint/checksum.py": CHECKPOINT_TESTS,
    "engine/checkpoint/schema.py": [*CHECKPOINT_TESTS, "tests/test_fuzz_inputs.py"],
    "engine/checkpoint/datastate.py": ["tests/test_datastate.py"],
    "engine/checkpoint/gather.py": CHECKPOINT_TESTS,  # one process: the gather is the identity
}
"""The core modules and the fast tests that reach each (slow and subprocess tests left out)."""

PYPROJECT = """\
[tool.mutmut]
source_paths = [{source}]
also_copy = ["hookloop/", "tests/"]
pytest_add_cli_args_test_selection = {tests}
pytest_add_cli_args = ["-p", "no:cacheprovider", "-m", "not slow"]

[tool.pytest.ini_options]
addopts = ["--import-mode=importlib", "--strict-markers"]
markers = ["slow: end-to-end tests that train for more than a few seconds"]
"""


def scratch_copy(work: Path, module: str, tests: list[str]) -> None:
    """`work/hookloop` = engine/ with plugins/ inside, `work/tests` = tests/, and the config."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "engine", work / "hookloop", ignore=ignore)
    shutil.copytree(ROOT / "plugins", work / "hookloop" / "plugins", ignore=ignore)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
    source = "hookloop/" + module.removeprefix("engine/")
    (work / "pyproject.toml").write_text(
        PYPROJECT.format(source=json.dumps(source), tests=json.dumps(tests))
    )


def mutmut(work: Path, *args: str, capture: bool = False) -> str:
    """Run the mutmut next to this interpreter in `work`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [str(Path(sys.executable).parent / "mutmut"), *args],
        cwd=work,
        env=env,
        check=False,
        capture_output=capture,
        text=True,
    )
    return out.stdout if capture else ""


def run_module(module: str, tests: list[str], work: Path) -> dict:
    """Mutate one module; the count of each outcome and the surviving variants' diffs."""
    scratch_copy(work, module, tests)
    mutmut(work, "run")
    listing = mutmut(work, "results", "--all", "true", capture=True)
    outcomes: dict[str, str] = {}
    for line in listing.splitlines():
        m = re.match(r"\s*(\S+__mutmut_\d+): (.+)$", line)
        if m:
            outcomes[m.group(1)] = m.group(2).strip()
    counts: dict[str, int] = {}
    for outcome in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    survivors = {
        name: mutmut(work, "show", name, capture=True)
        for name, outcome in outcomes.items()
        if outcome in ("survived", "no tests")
    }
    return {"module": module, "tests": tests, "counts": counts, "survivors": survivors}


def score(counts: dict[str, int]) -> tuple[float, int]:
    """Killed share of the variants that ran or that no test reached; and that total."""
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    total = killed + counts.get("survived", 0) + counts.get("no tests", 0)
    return (killed / total if total else float("nan")), total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="core modules, e.g. engine/dispatch.py")
    parser.add_argument("--tests", nargs="+", help="test files (default: the module's own)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folders")
    parser.add_argument("--list", action="store_true", help="print the modules and their tests")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    if args.list or not args.modules:
        for module, tests in FAST_TESTS.items():
            print(f"{module}: {' '.join(tests)}")
        return 0
    if not (Path(sys.executable).parent / "mutmut").exists():
        print('mutmut is not installed: pip install -e ".[mutation]"', file=sys.stderr)
        return 2
    results = []
    for module in args.modules:
        tests = args.tests or FAST_TESTS.get(module)
        if not tests:
            print(f"no fast tests known for {module}: pass --tests", file=sys.stderr)
            return 2
        work = Path(tempfile.mkdtemp(prefix="hookloop-mutation-"))
        try:
            result = run_module(module, tests, work)
        finally:
            if args.keep:
                print(f"scratch folder kept: {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
        results.append(result)
        share, total = score(result["counts"])
        print(f"{module}: {share:.1%} of {total} killed {json.dumps(result['counts'])}")
        for name, diff in result["survivors"].items():
            print(f"--- survived: {name}\n{diff}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
