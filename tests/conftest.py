"""Shared fixtures. In importlib mode tests/ is not on sys.path, so helpers live here."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from hookloop.testing import TINY_RUN

# `make_engine` (an Engine over a tiny MLP) comes from hookloop's own pytest plugin,
# `hookloop.pytest_plugin`, exactly as plugin authors get it.


# --- subprocesses that fail fast and leave nothing behind -----------------------------------

SUBPROCESS_TIMEOUT = 40.0
"""Seconds a test subprocess may run on an idle machine (a working one takes a few)."""


def hang_limit(seconds: float) -> float:
    """`seconds` stretched by how oversubscribed the CPUs are (1-minute load per core), so a
    loaded machine does not pass for a hang; an idle one keeps the limit as given."""
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    return seconds * min(max(load, 1.0), 8.0)


_started: list[subprocess.Popen] = []


def start_process(
    cmd: Sequence[str], *, env: dict | None = None, **kwargs: Any
) -> subprocess.Popen:
    """Start `cmd` in a new session (its own process group), pipes as text.

    Every process started here is killed with its whole group (DDP workers, spawned children)
    when the test ends, passed or failed; `env` entries are added to the environment.
    """
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    proc = subprocess.Popen(
        [str(c) for c in cmd],
        text=True,
        start_new_session=True,
        # faulthandler: a hung process killed with SIGABRT prints where each thread was
        env={**os.environ, "PYTHONFAULTHANDLER": "1", **(env or {})},
        **kwargs,
    )
    _started.append(proc)
    return proc


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL every process in `proc`'s group (the process and all it started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(proc.pid, signal.SIGKILL)


def _fail_hung(proc: subprocess.Popen, timeout: float, what: str) -> None:
    """Kill a hung process group and fail the test with its output, including the Python
    stack of every process in the group (SIGABRT first, so faulthandler prints them)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGABRT)
    try:
        out, err = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
    kill_group(proc)  # workers that outlived the leader
    pytest.fail(
        f"{' '.join(map(str, proc.args))} {what} after {timeout:.0f}s: killed its process "
        f"group\n--- stderr (end) ---\n{(err or '')[-6000:]}\n--- stdout (end) ---\n"
        f"{(out or '')[-2000:]}",
        pytrace=False,
    )


def finish_process(proc: subprocess.Popen, timeout: float = SUBPROCESS_TIMEOUT) -> tuple[str, str]:
    """Wait for `proc` and return its (stdout, stderr); past `timeout`, kill its whole group and
    fail the test with the end of its stderr. Children it left running are killed either way.
    The limit is stretched on a loaded machine (`hang_limit`)."""
    timeout = hang_limit(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            out, err = proc.communicate(timeout=min(0.5, max(deadline - time.monotonic(), 0)))
        except subprocess.TimeoutExpired:
            if proc.poll() is None:
                continue
            kill_group(proc)  # it exited; what it left behind holds the pipes
            out, err = proc.communicate()
        kill_group(proc)  # children it left running
        return out, err
    _fail_hung(proc, timeout, "still running")
    raise AssertionError("unreachable: pytest.fail raised")


def read_line(proc: subprocess.Popen, timeout: float = SUBPROCESS_TIMEOUT) -> str:
    """The next line `proc` prints; fail the test (killing the group) if none comes in time."""
    timeout = hang_limit(timeout)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        _fail_hung(proc, timeout, "printed no line")
    return line[0]


def run_process(
    cmd: Sequence[str], *, timeout: float = SUBPROCESS_TIMEOUT, **kwargs: Any
) -> subprocess.CompletedProcess:
    """`subprocess.run` that fails fast: see `start_process` and `finish_process`."""
    proc = start_process(cmd, **kwargs)
    out, err = finish_process(proc, timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def python_script(*args: Any) -> list[str]:
    """A command line running this interpreter."""
    return [sys.executable, *map(str, args)]


@pytest.fixture(autouse=True)
def _kill_leftover_processes() -> Any:
    """After each test, kill the process group of every subprocess it started."""
    yield
    while _started:
        proc = _started.pop()
        kill_group(proc)
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def procs() -> Any:
    """The fail-fast subprocess helpers: `procs.run`, `procs.start`, `procs.finish`,
    `procs.read_line` (importlib mode keeps conftest off sys.path, so tests take them here)."""

    class Procs:
        run = staticmethod(run_process)
        start = staticmethod(start_process)
        finish = staticmethod(finish_process)
        read_line = staticmethod(read_line)
        timeout = SUBPROCESS_TIMEOUT

    return Procs()


# --- checkpoint tests: a tiny LM trained in this process or in a subprocess -----------------

CKPT_WORKER = r'''
"""Train a tiny LM with checkpoints: `python worker.py RUN_DIR --steps N [options]`.

Random-window batches (resumable through iter_epoch), dropout (so RNG restore matters) and
gradient accumulation, so an exact resume needs every piece of the checkpoint.
"""
import argparse
import json
import os
import signal
import sys
import time

import torch
import torch.nn.functional as F

from hookloop import Engine, hookimpl
from hookloop.checkpoint import latest_valid_checkpoint, load_checkpoint
from hookloop.loading import load_plugins

VOCAB, SEQ = 32, 8


class TinyLM(torch.nn.Module):
    def __init__(self, vocab=VOCAB, width=16):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, width)
        self.mix = torch.nn.Linear(width, width)
        self.drop = torch.nn.Dropout(0.2)

    def forward(self, x):
        h = self.drop(torch.tanh(self.mix(self.emb(x))))
        return F.linear(h, self.emb.weight)  # tied head


class RandomWindows:
    """`per_epoch` batches of random windows; epoch e draws from a generator seeded with e."""

    def __init__(self, per_epoch=10, batch=4, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(0, VOCAB, (500,), generator=g)
        self.per_epoch, self.batch, self.seed = per_epoch, batch, seed

    def iter_epoch(self, epoch, start):
        g = torch.Generator().manual_seed(1000 * self.seed + epoch)
        starts = torch.randint(0, len(self.tokens) - SEQ - 1, (self.per_epoch, self.batch), generator=g)
        for i in range(start, self.per_epoch):
            w = torch.stack([self.tokens[s : s + SEQ + 1] for s in starts[i].tolist()])
            yield w[:, :-1].contiguous(), w[:, 1:].contiguous()

    def __iter__(self):
        return self.iter_epoch(0, 0)


class Trace:
    """Append each step's loss to run_dir/trace.jsonl (one line per step, per process)."""

    name = "trace"

    @hookimpl
    def after_step(self, engine, state):
        with open(engine.run_dir / "trace.jsonl", "a") as f:
            f.write(json.dumps({"step": state.step, "loss": state.loss.item()}) + "\n")


class Misbehave:
    """Test controls: sleep per step, stop after step `stop_at`, SIGKILL right after the
    after_step checkpoint of step `kill_after` (before that epoch's end, if it ends one)."""

    name = "misbehave"

    def __init__(self, kill_after=-1, sleep=0.0, ready=False, stop_at=-1):
        self.kill_after, self.sleep, self.ready, self.stop_at = kill_after, sleep, ready, stop_at

    @hookimpl
    def on_fit_start(self, state):
        if self.ready:
            print(f"READY {state.step}", flush=True)

    @hookimpl
    def after_step(self, state):
        if self.sleep:
            time.sleep(self.sleep)
        if state.step == self.stop_at:
            state.request_stop("test stop")

    @hookimpl
    def before_step(self, state):  # so the after_step checkpoint of that step is written
        if state.step == self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    @hookimpl(tryfirst=True)  # at an epoch's end: before eval runs and csv fills in the row
    def on_epoch_end(self, state):
        if state.step == self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)


def build(run_dir, *, every=2, keep=2, accumulate=2, background=False, misbehave=None,
          disable=(), seed=0):
    torch.manual_seed(seed)
    model = TinyLM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.9, 0.95))
    plugins = load_plugins(
        # A fixed schedule length: runs stopped early by fit(max_steps=k) must follow the
        # same lr curve as the uninterrupted run they are compared with.
        {"checkpoint": {"every": every, "keep_last": keep, "background": background},
         "schedule": {"total_steps": 64}},
        disable=disable,
    )
    plugins += [Trace(), misbehave or Misbehave()]
    return Engine(model, optimizer, RandomWindows(), val_data=list(RandomWindows(seed=1))[:2],
                  plugins=plugins, run_dir=run_dir, accumulate=accumulate)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--every", type=int, default=2)
    p.add_argument("--kill-after", type=int, default=-1)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--no-checkpoint", action="store_true")
    a = p.parse_args()
    from pathlib import Path

    from hookloop.logs import configure_logging

    configure_logging(stream=sys.stderr)

    run_dir = Path(a.run_dir)
    engine = build(run_dir, every=a.every, disable=["checkpoint"] if a.no_checkpoint else [],
                   misbehave=Misbehave(a.kill_after, a.sleep, ready=True))
    found = latest_valid_checkpoint(run_dir, journal=engine.journal)
    if found is not None:
        load_checkpoint(engine, found)
    engine.fit(max_steps=a.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''


class CkptWorker:
    """The checkpoint-test worker script: `.build(...)` in process, `.popen(...)` outside."""

    def __init__(self, path: Any) -> None:
        import runpy

        self.path = path
        self.namespace = runpy.run_path(str(path), run_name="ckpt_worker")
        self.build = self.namespace["build"]

    def popen(self, run_dir: Any, *args: str, env: dict | None = None) -> Any:
        """Start the worker in its own process group (killed when the test ends)."""
        return start_process(python_script(self.path, run_dir, *args), env=env)

    def run(self, run_dir: Any, *args: str, env: dict | None = None) -> Any:
        """Run the worker to the end: `(returncode, stdout, stderr)`; fails the test if hung."""
        proc = self.popen(run_dir, *args, env=env)
        out, err = finish_process(proc)
        return proc.returncode, out, err


@pytest.fixture(scope="session")
def ckpt_worker(tmp_path_factory: pytest.TempPathFactory) -> CkptWorker:
    """A tiny LM training script with random windows, dropout, accumulation and checkpoints."""
    path = tmp_path_factory.mktemp("worker") / "worker.py"
    path.write_text(CKPT_WORKER)
    return CkptWorker(path)


# --- the command line as a subprocess ---------------------------------------------------------


class CliServer:
    """A client of `tests/cli_server.py`: `hookloop` commands in processes forked from one
    that has already imported torch and the commands (see that module's docstring).

    Started on first use; one per test session (per xdist worker).
    """

    def __init__(self) -> None:
        import itertools
        import json
        import tempfile
        from pathlib import Path

        self._json = json
        self._dir = Path(tempfile.mkdtemp(prefix="hookloop-cli-"))
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._pids: dict[int, int] = {}  # request id -> pid
        self._ends: dict[int, int] = {}  # pid -> returncode
        self._changed = threading.Condition(self._lock)
        server = Path(__file__).with_name("cli_server.py")
        self._proc = subprocess.Popen(
            [sys.executable, str(server)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        ready = read_line(self._proc, timeout=120)  # the imports: seconds
        assert json.loads(ready) == {"ready": True}, ready
        threading.Thread(target=self._read_replies, daemon=True).start()

    def _read_replies(self) -> None:
        for line in self._proc.stdout:
            message = self._json.loads(line)
            with self._changed:
                if "returncode" in message:
                    self._ends[message["pid"]] = message["returncode"]
                else:
                    self._pids[message["id"]] = message["pid"]
                self._changed.notify_all()

    def _wait(self, found: Callable[[], Any], timeout: float) -> Any:
        with self._changed:
            self._changed.wait_for(lambda: found() is not None, timeout)
            return found()

    def run(
        self, args: Sequence[str], *, cwd: Any, env: dict[str, str], timeout: float, merge: bool
    ) -> subprocess.CompletedProcess:
        """`python -m hookloop ARGS` forked from the server; output as text. `merge`: stderr
        goes into stdout, as `stderr=subprocess.STDOUT`."""
        number = next(self._ids)
        out, err = self._dir / f"{number}.out", self._dir / f"{number}.err"
        request = {
            "id": number,
            "argv": [str(a) for a in args],
            "cwd": os.path.abspath(cwd or os.getcwd()),
            "env": env,
            "stdout": str(out),
            "stderr": str(out if merge else err),
        }
        with self._lock:
            self._proc.stdin.write((self._json.dumps(request) + "\n").encode())
            self._proc.stdin.flush()
        pid = self._wait(lambda: self._pids.get(number), 60)
        assert pid is not None, "the hookloop fork server did not answer"
        limit = hang_limit(timeout)
        returncode = self._wait(lambda: self._ends.get(pid), limit)
        hung = returncode is None
        if hung:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGABRT)  # faulthandler prints every thread's stack
            returncode = self._wait(lambda: self._ends.get(pid), 5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # what it left running
        stdout = out.read_text(errors="replace")
        stderr = "" if merge else err.read_text(errors="replace")
        out.unlink()
        err.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "hookloop", *request["argv"]]
        if hung:
            pytest.fail(
                f"{' '.join(argv)} still running after {limit:.0f}s: killed its process group"
                f"\n--- stderr (end) ---\n{stderr[-6000:]}\n--- stdout (end) ---\n"
                f"{stdout[-2000:]}",
                pytrace=False,
            )
        return subprocess.CompletedProcess(argv, returncode, stdout, stderr)

    def close(self) -> None:
        """Stop the server (it kills what still runs) and remove the output files."""
        import shutil

        self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            kill_group(self._proc)
            self._proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


_server: list[CliServer] = []


def forked_hookloop(
    args: Sequence[str],
    *,
    cwd: Any = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    merge: bool = False,
) -> subprocess.CompletedProcess:
    """`python -m hookloop ARGS` as a process forked from the session's fork server; `env` is
    the whole environment (default: this one)."""
    if not _server:
        _server.append(CliServer())
    environ = dict(os.environ if env is None else env)
    return _server[0].run(args, cwd=cwd, env=environ, timeout=timeout, merge=merge)


@pytest.fixture(scope="session", name="forked_hookloop")
def _forked_hookloop_fixture() -> Callable[..., subprocess.CompletedProcess]:
    """`forked_hookloop(ARGS, cwd=, env=, timeout=, merge=)`: see that function."""
    return forked_hookloop


@pytest.fixture(scope="session", autouse=True)
def _stop_cli_server() -> Any:
    yield
    while _server:
        _server.pop().close()


def _run_hookloop(
    *args: str,
    cwd: Any = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    autoload: bool = False,
    real: bool = False,
) -> subprocess.CompletedProcess:
    environ = {**os.environ, **(env or {})}
    if not autoload:  # only the built-ins and what a config names, not every installed plugin
        environ["HOOKLOOP_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    if not real:
        return forked_hookloop(args, cwd=cwd, env=environ, timeout=timeout)
    return run_process(
        [sys.executable, "-m", "hookloop", *args], cwd=cwd, env=environ, timeout=timeout
    )


@pytest.fixture
def hookloop_cli() -> Callable[..., subprocess.CompletedProcess]:
    """Run `python -m hookloop ARGS` and return the completed process (text output).

    The process is forked from a server that has imported torch and the commands already
    (`tests/cli_server.py`): a real process with its own exit status, output and environment,
    without seconds of start-up. `real=True` starts a real interpreter instead, for what the
    start-up itself proves (`python -m` and each command's own imports).

    Keywords: `cwd`, `env` (added to the environment), `timeout` (120 s), `autoload` (False:
    third-party plugins load only when a config names them), `real` (False).
    """
    return _run_hookloop


@pytest.fixture
def one_line_error() -> Callable[[subprocess.CompletedProcess, str], None]:
    """Assert that a command failed with exit status 2 and one line naming `text`."""

    def check(out: subprocess.CompletedProcess, text: str) -> None:
        assert out.returncode == 2, out.stdout + out.stderr
        assert "Traceback" not in out.stderr and out.stderr.strip().count("\n") == 0, out.stderr
        assert text in out.stderr, out.stderr

    return check


# --- two CPU processes under torch.distributed (gloo) -------------------------------------

DDP_SCRIPT = """
import gc, json, sys
import torch, torch.distributed as dist, torch.multiprocessing as mp
import torch.nn.functional as F
from hookloop import Engine, hookimpl

{body}

def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank,
                            world_size=world)
    engine, result = run(rank)
    with open(f"{{out_dir}}/rank{{rank}}.json", "w") as f:
        json.dump(result, f)
    # Free the DDP wrapper (its reducer) before the process group goes: torch aborts at
    # exit now and then otherwise.
    del engine
    gc.collect()
    dist.barrier()  # no rank tears gloo down while another still talks to it
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(_worker, args=(2, sys.argv[1] + "/init", sys.argv[1]), nprocs=2, join=True)
"""


@pytest.fixture
def run_ddp(tmp_path: Any) -> Callable[[str], list[Any]]:
    """Run `body` on two gloo ranks in a fresh process; return each rank's result.

    `body` is the source of a script (torch, `F`, `Engine` and `hookimpl` are imported)
    that defines `run(rank) -> (engine, result)`; `result` must be JSON. The harness
    starts the process group, writes each rank's result, and frees the engine's DDP
    wrapper before the group is destroyed. Spawned workers re-import their module, so the
    program runs as a script of its own.
    """
    import json

    def run(body: str) -> list[Any]:
        script = tmp_path / "ddp.py"
        script.write_text(DDP_SCRIPT.format(body=body))
        # A rank that misses a collective waits in it forever: the time limit then kills the
        # whole group and fails with every worker's stack (see finish_process).
        out = run_process([sys.executable, script, tmp_path])
        assert out.returncode == 0, out.stderr[-6000:]
        return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    return run


# --- language-model recipe ------------------------------------------------------------------

LM_TEXT = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(400))
"""A small, very regular text: a tiny model learns it within a few dozen steps."""

TINY_LM = [o for o in TINY_RUN if not o.startswith("data.val_batches")]
"""`--set` overrides for a model and run small enough for a test."""


@pytest.fixture
def lm_data(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A prepared char-level data directory of `LM_TEXT` (90/10 split)."""
    from hookloop.lm.prepare import prepare_texts, split_text

    out = tmp_path_factory.mktemp("lm") / "data"
    train, val = split_text(LM_TEXT, 0.1)
    prepare_texts(train, val, out, tokenizer="char", source="conftest.LM_TEXT")
    return out


@pytest.fixture
def tiny_lm_overrides(lm_data: Any) -> list[str]:
    """`--set` overrides for a tiny model trained on `lm_data`."""
    return [*TINY_LM, f"data.path={lm_data}"]


@pytest.fixture
def tiny_lm_args() -> list[str]:
    """`--set KEY=VALUE` arguments for a tiny model on the default data; later `--set`
    arguments override these."""
    return _set_args(TINY_LM)


@pytest.fixture
def tiny_lm_data_args(tiny_lm_overrides: list[str]) -> list[str]:
    """`--set KEY=VALUE` arguments for a tiny model trained on `lm_data`."""
    return _set_args(tiny_lm_overrides)


def _set_args(overrides: list[str]) -> list[str]:
    return [arg for override in overrides for arg in ("--set", override)]


# --- tracker tests: a run killed with SIGKILL once steps past its checkpoint are logged --

TRACKER_RUN = r"""
import os, signal, sqlite3, sys, time
from pathlib import Path

import torch
import torch.nn.functional as F

from hookloop import Engine, hookimpl
from hookloop.plugins.checkpoint import Checkpoint


def logged_steps(tracker_name, run_dir):
    # what the tracker holds, read from its files (importing the tracker here takes seconds)
    if tracker_name == "mlflow":
        try:
            with sqlite3.connect(run_dir / "mlflow.db") as db:
                return [s for (s,) in db.execute("SELECT step FROM metrics WHERE key = 'loss'")]
        except sqlite3.Error:  # not created yet, or locked by a write
            return []
    from hookloop.plugins.tracking.wandbfile import history_steps

    return [s for f in (run_dir / "wandb").glob("offline-run-*/*.wandb") for s in history_steps(f)]


class KillOnceLogged:
    # at step `kill_at`, once the tracker holds step 5 (past the checkpoint at 4): kill -9
    name = "killer"

    def __init__(self, tracker_name, run_dir, kill_at):
        self.tracker_name, self.run_dir, self.kill_at = tracker_name, run_dir, kill_at

    @hookimpl
    def after_step(self, state):
        if state.step != self.kill_at:
            return
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if 5 in logged_steps(self.tracker_name, self.run_dir):
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.05)
        sys.exit("step 5 never reached the tracker")


def build(tracker_name, run_dir, kill_at=0):
    # 10 steps of a tiny model, a checkpoint every 4, the tracker sending every step
    if tracker_name == "mlflow":
        from hookloop.plugins.mlflow import MLflow as Tracker
    else:
        from hookloop.plugins.wandb import WandB as Tracker
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)) for _ in range(12)]
    plugins = [Tracker(flush_every=1), Checkpoint(every_steps=4, save_on_exception=False)]
    if kill_at:
        plugins.append(KillOnceLogged(tracker_name, run_dir, kill_at))
    return Engine(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        data,
        loss_fn=lambda m, b: F.mse_loss(m(b[0]), b[1]),
        plugins=plugins,
        run_dir=run_dir,
    )


if __name__ == "__main__":
    build(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])).fit(max_steps=10)
"""


class TrackerRun:
    """The tracker kill-and-resume harness: `kill(tracker, run_dir, kill_at)` trains in a
    subprocess and kills it with SIGKILL in step `kill_at`, once the tracker holds step 5
    (past the checkpoint at step 4); `resume(tracker, run_dir)` builds the same run in this
    process, loads the latest checkpoint and trains to step 10."""

    def __init__(self, script: Any) -> None:
        self.script = script

    def kill(self, tracker: str, run_dir: Any, kill_at: int) -> subprocess.CompletedProcess:
        # Not run_process: that kills the process group as soon as the leader exits, and the
        # killed run's tracker process must be left to end on its own, as after a real kill
        # (the group is killed when the test ends).
        cmd = python_script(self.script, tracker, run_dir, kill_at)
        proc = start_process(cmd, env={"WANDB_SILENT": "true"})
        timeout = hang_limit(SUBPROCESS_TIMEOUT * 3)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _fail_hung(proc, timeout, "still running")
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def resume(self, tracker: str, run_dir: Any) -> Any:
        import runpy

        from hookloop.checkpoint import latest_valid_checkpoint, load_checkpoint

        engine = runpy.run_path(str(self.script), run_name="tracker_run")["build"](tracker, run_dir)
        load_checkpoint(engine, latest_valid_checkpoint(run_dir))
        engine.fit(max_steps=10)
        return engine


@pytest.fixture
def tracker_run(tmp_path: Any) -> TrackerRun:
    """A `TrackerRun` for one test."""
    script = tmp_path / "tracker_run.py"
    script.write_text(TRACKER_RUN)
    return TrackerRun(script)
