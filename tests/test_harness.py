"""The test harness itself (tests/conftest.py): a hung subprocess fails the test quickly, with
its stderr, and nothing it started is left running."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

# Prints "parent", starts a grandchild that would sleep for ten minutes, writes its pid to
# argv[1], prints "started" to stderr, then hangs (or exits at once when argv[2] == "exit").
FAMILY = """
import subprocess, sys, time
print("parent", flush=True)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1], "w").write(str(child.pid))
print("started a grandchild", file=sys.stderr, flush=True)
if sys.argv[2] != "exit":
    time.sleep(600)
"""


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def gone_soon(pid: int) -> bool:
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def test_a_hung_process_fails_the_test_with_its_stderr_and_its_group_is_killed(tmp_path, procs):
    script = tmp_path / "family.py"
    script.write_text(FAMILY)
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception) as failure:
        procs.run([sys.executable, script, tmp_path / "pid", "hang"], timeout=3)
    assert time.monotonic() - start < 30
    message = str(failure.value)
    assert re.search(r"still running after \d+s: killed its process group", message)
    assert "started a grandchild" in message and "parent" in message
    # Where it hung is in the message when faulthandler's dumps arrive whole; under load the
    # parent's and grandchild's dumps interleave, so that part is not asserted.
    assert gone_soon(int((tmp_path / "pid").read_text()))


def test_children_left_behind_by_a_process_that_exits_are_killed(tmp_path, procs):
    script = tmp_path / "family.py"
    script.write_text(FAMILY)
    out = procs.run([sys.executable, script, tmp_path / "pid", "exit"])
    assert out.returncode == 0 and out.stdout == "parent\n"
    assert gone_soon(int((tmp_path / "pid").read_text()))


def test_waiting_for_a_line_that_never_comes_fails_and_kills(tmp_path, procs):
    script = tmp_path / "silent.py"
    script.write_text(
        "import sys, time\nprint('working', file=sys.stderr, flush=True)\ntime.sleep(600)\n"
    )
    proc = procs.start([sys.executable, script])
    with pytest.raises(pytest.fail.Exception, match=r"printed no line after \d+s(.|\n)*working"):
        procs.read_line(proc, timeout=2)
    assert proc.poll() is not None
