"""`hookloop train` under real `torchrun` (python -m torch.distributed.run): 2 CPU ranks, gloo.

Every launch runs in its own session with a timeout; on a timeout the whole process group
is killed and the workers' output shown. The 1-rank runs with twice the batch are the
reference: under torchrun `data.batch_size` is per rank, so 2 ranks x B read exactly the
windows 1 rank x 2B reads, and the losses and weights must agree.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hookloop.checkpoint import latest_valid_checkpoint, read_pointer, verify_checkpoint
from hookloop.cli import main

pytestmark = pytest.mark.slow

B = 4  # per-rank batch; the 1-rank reference uses 2 * B
TINY = [
    *("--set", "model.d_model=32", "--set", "model.n_heads=2", "--set", "model.n_layers=2"),
    *("--set", "model.d_ff=64", "--set", "model.max_seq_len=16", "--set", "data.seq_len=16"),
    # No biases: a key bias gets no gradient but rounding noise, which AdamW scales up to
    # full steps, so its value would differ between any two batch layouts.
    *("--set", "model.bias=false", "--set", "plugins.schedule.warmup_steps=2"),
    *("--set", "data.path=data", "--set", "data.val_batches=3", "--set", "plugins.eval.every=10"),
    *("--set", "plugins.eval.max_batches=2", "--set", "plugins.checkpoint.every=5"),
    *("--set", "plugins.checkpoint.keep_last=0", "-p", "no:progress", "-p", "no:schedule"),
]


def torchrun(*args: str, cwd: Path, timeout: float = 120, nproc: int = 2, module: bool = True):
    """Run `torchrun --standalone --nproc_per_node N [-m hookloop] ARGS`; kill the whole
    process group (agent and workers) if it outlives `timeout`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc_per_node", str(nproc), *(["-m", "hookloop"] if module else []), *args]
    env = {**os.environ, "HOOKLOOP_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, text=True, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun {' '.join(args)} hung past {timeout}s\n{out}\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Prepared char data, and the 1-rank reference run (batch 2B, 20 steps)."""
    root = tmp_path_factory.mktemp("torchrun")
    text = "".join(f"line {i % 17}: the cat sat on the mat {i % 5}.\n" for i in range(600))
    (root / "input.txt").write_text(text)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["prepare", "input.txt", "--out", "data"]) == 0
        args = ["train", *TINY, "--set", f"data.batch_size={2 * B}"]
        assert main([*args, "--set", "training.max_steps=20", "--run-dir", "ref"]) == 0
    finally:
        os.chdir(cwd)
    return root


def losses(run: Path) -> dict[int, float]:
    with open(run / "metrics.csv") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f) if r["loss"]}


def val_losses(run: Path) -> dict[int, float]:
    with open(run / "metrics.csv") as f:
        return {int(r["step"]): float(r["val_loss"]) for r in csv.DictReader(f) if r["val_loss"]}


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step-{step:08d}" / "model.safetensors")


def assert_close(run: Path, ref: Path, *, steps: range, rel: float = 1e-5) -> None:
    mine, theirs = losses(run), losses(ref)
    for s in steps:
        assert abs(mine[s] - theirs[s]) <= rel * abs(theirs[s]), (s, mine[s], theirs[s])
    a, b = weights(run, steps[-1]), weights(ref, steps[-1])
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5, msg=k)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_train_one_run_equal_to_one_rank_with_twice_the_batch(workdir, strategy):
    out = ok(
        torchrun(
            "train", *TINY, "--set", f"data.batch_size={B}", "--set", "training.max_steps=20",
            "--set", f"distributed.strategy={strategy}", "--runs", f"runs-{strategy}",
            cwd=workdir,
        )
    )  # fmt: skip
    assert out.count(f"world size 2, backend gloo, strategy {strategy}") == 1
    assert out.count("run directory: ") == 1
    (run,) = (workdir / f"runs-{strategy}").iterdir()  # one run directory for both ranks
    assert [p.name for p in run.glob("metrics*.csv")] == ["metrics.csv"]
    state = verify_checkpoint(run / "checkpoints" / "step-00000020")
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    assert_close(run, workdir / "ref", steps=range(1, 21))
    # Validation is sharded over the ranks and summed: the same value as on one rank.
    val, ref_val = val_losses(run), val_losses(workdir / "ref")
    assert val.keys() == ref_val.keys() == {10, 20}
    assert all(abs(val[s] - ref_val[s]) <= 1e-5 * ref_val[s] for s in val), (val, ref_val)


def test_a_mixture_on_two_ranks_equals_one_rank_with_twice_the_batch(workdir):
    """`data.sources` under torchrun: each rank trains on its slice of one global batch, so
    2 ranks x B train what 1 rank x 2B trains (rather than the same rows on every rank)."""
    (workdir / "other.txt").write_text(
        "".join(f"def f{i}(x): return x * {i}\n" for i in range(400))
    )
    sources = 'data.sources=[{path = "mix-a", weight = 0.7}, {path = "mix-b", weight = 0.3}]'
    args = ["train", *TINY, "--set", 'data.path=""', "--set", sources]
    args += ["--set", "training.max_steps=10"]
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        for text, out in (("input.txt", "mix-a"), ("other.txt", "mix-b")):
            assert main(["prepare", text, "--out", out, "--tokenizer", "byte"]) == 0
        single = [*args, "--set", f"data.batch_size={2 * B}", "--run-dir", "mix-ref"]
        assert main(single) == 0
    finally:
        os.chdir(cwd)
    ok(torchrun(*args, "--set", f"data.batch_size={B}", "--run-dir", "mix-2", cwd=workdir))
    assert verify_checkpoint(workdir / "mix-2" / "checkpoints" / "step-00000010")["world_size"] == 2
    assert_close(workdir / "mix-2", workdir / "mix-ref", steps=range(1, 11))
    with open(workdir / "mix-2" / "metrics.csv") as f:
        (two,) = [r for r in csv.DictReader(f) if r["val_loss"]]
    with open(workdir / "mix-ref" / "metrics.csv") as f:
        (one,) = [r for r in csv.DictReader(f) if r["val_loss"]]
    for key in ("val_loss", "val_loss/mix-a", "val_loss/mix-b"):  # sharded, summed: equal
        assert abs(float(two[key]) - float(one[key])) <= 1e-5 * float(one[key]), (key, two, one)


def test_killed_rank_ends_the_job_and_resumes_bitwise_on_two_and_close_on_one(workdir):
    """A rank SIGKILLed mid-run: torchrun exits non-zero, the last checkpoint verifies;
    resumed on 2 ranks it ends bitwise where a straight 2-rank run ends; resumed on 1 rank
    with batch 2B, within 1e-5 of it."""
    args = ["train", *TINY, "--set", f"data.batch_size={B}", "--run-dir", "killed"]
    proc, out, err = signal_rank_1_after_a_checkpoint(workdir, args, signal.SIGKILL)
    assert proc.returncode != 0, out + err
    last = latest_valid_checkpoint(workdir / "killed", exact=True)
    assert last is not None and verify_checkpoint(last)["world_size"] == 2
    # What rank 0 saved alone as the job died says what it is: not exact, never resumed.
    for emergency in (workdir / "killed" / "checkpoints").glob("emergency-*"):
        state = json.loads((emergency / "state.json").read_text())
        assert state["exact"] is False and state["world_size"] == 2, emergency
    end = max(20, last_step(last) + 5)  # the job may have run past step 20 before the kill

    # The straight reference: the same run to `end` on 2 ranks, then resume the killed
    # one to `end`, on 2 ranks, from wherever it got to (the lr is constant: no schedule).
    limit = ["--set", f"training.max_steps={end}"]
    ok(torchrun(*args[:-1], "straight", *limit, cwd=workdir))
    shutil.copytree(workdir / "killed", workdir / "killed-1")
    resume = ["--resume", "auto", *limit]
    resumed_out = ok(torchrun(*args, *resume, cwd=workdir))
    assert f"from {last.name} (step {last_step(last)})" in resumed_out
    straight, resumed = weights(workdir / "straight", end), weights(workdir / "killed", end)
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    assert losses(workdir / "killed")[end] == losses(workdir / "straight")[end]

    # On 1 rank with twice the batch: the same windows per step, within float rounding.
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        single = ["train", *TINY, "--set", f"data.batch_size={2 * B}", "--run-dir", "killed-1"]
        assert main([*single, *resume]) == 0
    finally:
        os.chdir(cwd)
    steps = range(last_step(last) + 1, end + 1)
    assert_close(workdir / "killed-1", workdir / "straight", steps=steps)


def test_sigusr1_to_one_rank_saves_one_checkpoint_at_one_step_and_resume_auto_continues(
    workdir,
):
    """SLURM's warning signal reaching only rank 1: both ranks stop at the same step, rank 0
    writes one checkpoint of the 2-rank state, every rank exits 128 + SIGUSR1 (so torchrun
    fails, and a retry loop runs the job again), and `--resume auto` goes on."""
    args = ["train", *TINY, "--set", f"data.batch_size={B}", "--run-dir", "preempted"]
    proc, out, err = signal_rank_1_after_a_checkpoint(workdir, args, signal.SIGUSR1)
    assert proc.returncode != 0, out + err
    assert f"exitcode  : {128 + signal.SIGUSR1}" in err, err
    assert "run preempted stopped before its end; continue it with" in out
    assert err.count("received SIGUSR1") == 1, err  # only rank 1 got it
    run = workdir / "preempted"
    journal = [json.loads(x) for x in (run / "journal.jsonl").read_text().splitlines()]
    (entry,) = [e for e in journal if e["event"] == "signal_received"]
    last = latest_valid_checkpoint(run)
    assert last is not None and last_step(last) == entry["step"] > 0
    assert verify_checkpoint(last)["world_size"] == 2
    assert max(losses(run)) == entry["step"]  # no rank went a step further

    target = entry["step"] + 3
    ok(torchrun(*args, "--resume", "auto", "--set", f"training.max_steps={target}", cwd=workdir))
    assert max(losses(run)) == target and last_step(latest_valid_checkpoint(run)) == target


KILL_STEPS = 300
"""Steps of the kill-loop job with the default 2 kills; longer loops get 150 per kill."""


def test_sigkill_of_either_rank_at_random_moments_then_the_same_command_ends_bitwise(workdir):
    """The relaunch command of a job script, `-c job.toml --resume auto`, run again after
    each SIGKILL of rank 0 or rank 1 at a random moment (before the first checkpoint, mid
    step, mid write): the run ends with the weights of an uninterrupted one, bit for bit.
    HOOKLOOP_KILLS sets how many kills (default 2: one of each rank)."""
    kills = int(os.environ.get("HOOKLOOP_KILLS", "2"))
    steps = max(KILL_STEPS, 150 * kills)
    (workdir / "job.toml").write_text(f"[training]\nmax_steps = {steps}\n")
    job = ["train", "-c", "job.toml", "--resume", "auto", *TINY, "--set", f"data.batch_size={B}"]
    ok(torchrun(*job, "--run-dir", "kill-ref", cwd=workdir))

    tally = kill_loop(workdir, [*job, "--run-dir", "killed"], kills=kills, seed=kills)
    print(f"kills: {tally}")  # the closing figures of a long loop: pytest -s HOOKLOOP_KILLS=10
    assert tally["rank 0"] + tally["rank 1"] >= min(kills, 2), tally
    finished = ok(torchrun(*job, "--run-dir", "killed", cwd=workdir))
    assert "already reached its end" in finished or "done:" in finished
    run = workdir / "killed"
    for emergency in (run / "checkpoints").glob("emergency-*"):  # what a dying job saved
        state = json.loads((emergency / "state.json").read_text())
        assert state["exact"] is False, emergency  # kept for inspection, never resumed
    straight, resumed = weights(workdir / "kill-ref", steps), weights(run, steps)
    assert straight.keys() == resumed.keys()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k


def kill_loop(workdir: Path, args: list[str], *, kills: int, seed: int) -> dict[str, int]:
    """Launch the 2-rank job `hookloop ARGS` `kills` times, SIGKILLing rank 0 and rank 1 in
    turn while it starts up or once it has gone a random 1 to 25 steps past the checkpoint
    it resumed from (plus a random fraction of a step); how many kills hit each rank, a
    checkpoint write in progress, and a job that had ended first."""
    import random

    rng = random.Random(seed)
    run = workdir / args[args.index("--run-dir") + 1]
    tally = {"rank 0": 0, "rank 1": 0, "starting up": 0, "checkpoint write": 0, "already ended": 0}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    env = {**os.environ, "HOOKLOOP_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1"}
    for i in range(kills):
        rank, launched = i % 2, time.time()
        exact = latest_valid_checkpoint(run, exact=True) if run.is_dir() else None
        start = last_step(exact) if exact is not None else 0  # where this launch goes on from
        target = start + rng.randint(1, 25) if rng.random() > 0.2 else 0  # 0: starting up
        proc = subprocess.Popen(
            [*cmd, "2", "-m", "hookloop", *args], cwd=workdir, env=env, text=True,
            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while target and proc.poll() is None and not _reached(run, target, since=launched):
                assert time.monotonic() < deadline, "the job never reached the step"
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.05) if target else rng.uniform(0.5, 4))
            pid = None
            while pid is None and proc.poll() is None:
                pid = _worker_pids(proc.pid).get(rank)
            if pid is None:
                out, err = proc.communicate(timeout=60)
                assert proc.returncode == 0, out + err  # it ended, and ended well
                tally["already ended"] += 1
            else:
                os.kill(pid, signal.SIGKILL)
                tally[f"rank {rank}"] += 1
                tally["starting up"] += not _reached(run, start + 1, since=launched)
                folder = run / "checkpoints"
                if folder.is_dir() and any(p.name.startswith(".") for p in folder.iterdir()):
                    tally["checkpoint write"] += 1
            proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    return tally


def _reached(run: Path, step: int, *, since: float) -> bool:
    """Whether this launch of the job (its metrics.csv written after `since`) logged
    `step`; tolerates a row being written."""
    try:
        if (run / "metrics.csv").stat().st_mtime < since:
            return False
        rows = (run / "metrics.csv").read_text().splitlines()[1:]
        return max((int(r.split(",", 1)[0]) for r in rows if r[:1].isdigit()), default=0) >= step
    except (OSError, ValueError):
        return False


def test_eval_under_two_ranks_shards_the_batches_and_equals_one_process(workdir):
    """A 1-rank checkpoint evaluated by 2 ranks gives the 1-process validation loss."""
    one = subprocess.run(
        [sys.executable, "-m", "hookloop", "eval", "--run", "ref"], cwd=workdir,
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "HOOKLOOP_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )  # fmt: skip
    two = ok(torchrun("eval", "--run-dir", "ref", cwd=workdir))

    def val_loss(out: str) -> float:
        (line,) = [x for x in out.splitlines() if x.startswith("val_loss")]
        return float(line.split()[1])

    # Printed to 4 decimals; the all-reduce only reorders a float sum.
    assert abs(val_loss(two) - val_loss(ok(one))) <= 1.01e-4, two


def test_a_one_rank_checkpoint_resumes_on_two_ranks_with_half_the_batch(workdir):
    """The reference run (1 rank, batch 2B) resumed from step 10 on 2 ranks with batch B
    ends where it ended itself, within float rounding."""
    run = workdir / "ref-on-2"
    shutil.copytree(workdir / "ref", run)
    for checkpoint in (run / "checkpoints").glob("step-*"):
        if last_step(checkpoint) > 10:
            shutil.rmtree(checkpoint)
    for pointer in ("latest", "best"):
        (run / "checkpoints" / pointer).unlink(missing_ok=True)
    with open(run / "metrics.csv") as f:  # the rows after step 10 belong to the old run
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= 10]
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    resume = ["--resume", "auto", "--set", "training.max_steps=20", "--run-dir", "ref-on-2"]
    ok(torchrun("train", *TINY, "--set", f"data.batch_size={B}", *resume, cwd=workdir))
    assert_close(run, workdir / "ref", steps=range(11, 21))


def signal_rank_1_after_a_checkpoint(
    workdir: Path, args: list[str], sig: signal.Signals
) -> tuple[subprocess.Popen, str, str]:
    """Start a long 2-rank `hookloop <args>` (ending in `--run-dir RUN`), send `sig` to rank
    1 once RUN's first checkpoint exists, and wait for the job: the process, stdout, stderr."""
    run = workdir / args[args.index("--run-dir") + 1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    env = {**os.environ, "HOOKLOOP_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*cmd, "2", "-m", "hookloop", *args, "--set", "training.max_steps=100000"],
        cwd=workdir, env=env, text=True, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while read_pointer(run / "checkpoints", "latest") is None:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        os.kill(_worker_pid(proc.pid, rank=1), sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc, out, err


def last_step(path: Path) -> int:
    return json.loads((path / "state.json").read_text())["counters"]["step"]


def _worker_pid(agent: int, *, rank: int) -> int:
    """The pid of torchrun worker `rank` under the agent process `agent` (from /proc)."""
    pid = _worker_pids(agent).get(rank)
    if pid is None:
        raise AssertionError(f"no worker of rank {rank} under torchrun pid {agent}")
    return pid


def _worker_pids(agent: int) -> dict[int, int]:
    """The pids of the torchrun workers under the agent process `agent`, by rank (/proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        ranks = [v[5:] for v in environ if v.startswith(b"RANK=")]
        if ppid == agent and ranks and ranks[0].isdigit():
            found[int(ranks[0])] = int(entry.name)
    return found


NAN_SCRIPT = '''
import sys
from hookloop.cli import main
from hookloop.lm import recipe


_build = recipe.build_run


def build_run(config, run_dir=None, **options):
    """The recipe's run, whose loss is NaN on rank 1 only in the third step."""
    run = _build(config, run_dir, **options)
    loss_fn = run.engine.loss_fn

    def poisoned(model, batch):
        loss = loss_fn(model, batch)
        if run.engine.rank == 1 and run.engine.state.step == 2:
            return loss * float("nan")
        return loss

    run.engine.loss_fn = poisoned
    return run


recipe.build_run = build_run
sys.exit(main(sys.argv[1:]))
'''


ONE_RANK_STOP_SCRIPT = '''
import os
import sys
from hookloop.cli import main
from hookloop.distributed import collectives
from hookloop.lm import recipe

_build, _agree = recipe.build_run, collectives.agree_on_stop
WHEN = os.environ["ONE_RANK_STOP"]


def build_run(config, run_dir=None, **options):
    """The recipe's run, where rank 1 alone asks to stop at the worst moment."""
    run = _build(config, run_dir, **options)
    engine, call = run.engine, run.engine.hooks.call

    def agree(state, device):
        agreed = _agree(state, device)
        # As a signal arriving while the ranks agree: after rank 1's vote, before its loop
        # reads the decision.
        if WHEN == "agreement" and engine.rank == 1 and state.step == 3:
            state.request_stop("rank 1 asked, mid-agreement")
        return agreed

    def hooks_call(name, **kwargs):
        result = call(name, **kwargs)
        if WHEN == "epoch" and name == "on_epoch_end" and engine.rank == 1:
            engine.state.request_stop("rank 1 asked at the end of an epoch")
        return result

    collectives.agree_on_stop = agree
    engine.hooks.call = hooks_call
    return run


recipe.build_run = build_run
sys.exit(main(sys.argv[1:]))
'''


@pytest.mark.parametrize("when", ["agreement", "epoch"])
def test_a_stop_asked_on_one_rank_at_any_moment_stops_both_at_one_step(workdir, when, monkeypatch):
    """A stop request on rank 1 alone, made just after the ranks agreed to go on (as a
    signal can) or in `on_epoch_end` (where no step agreement follows): every rank stops at
    the same step boundary and the run ends cleanly instead of hanging in mismatched
    collectives."""
    (workdir / "stop.py").write_text(ONE_RANK_STOP_SCRIPT)
    run = f"stop-{when}"
    monkeypatch.setenv("ONE_RANK_STOP", when)
    result = torchrun(
        "stop.py", "train", *TINY, "--set", f"data.batch_size={B}",
        "--set", "training.max_steps=400", "--run-dir", run, cwd=workdir, module=False,
        timeout=90,
    )  # fmt: skip
    ok(result)
    last = last_step(latest_valid_checkpoint(workdir / run))
    assert max(losses(workdir / run)) == last < 400
    if when == "agreement":
        assert last == 4  # asked after step 3's agreement: honoured at the end of step 4


@pytest.mark.parametrize("strategy", ["fsdp"])
def test_nan_on_one_rank_stops_every_rank_at_the_same_step(workdir, strategy):
    (workdir / "nan.py").write_text(NAN_SCRIPT)
    result = torchrun(
        "nan.py", "train", *TINY, "--set", f"data.batch_size={B}",
        "--set", "training.max_steps=20", "--set", f"distributed.strategy={strategy}",
        "--run-dir", "nan", cwd=workdir, module=False,
    )  # fmt: skip
    assert result.returncode != 0
    # Both ranks stop at step 2 (the third) with the guard's message, none hangs.
    assert result.stderr.count("nan_guard: step 2: loss is nan") == 2, result.stderr
    # The recipe's fused AdamW skips the bad update on the device and the guard reads the
    # verdict one step late: the emergency checkpoint is named after that next step.
    assert (workdir / "nan" / "checkpoints" / "emergency-step-00000003").is_dir()


def test_verify_resume_under_two_ranks(workdir):
    out = ok(
        torchrun(
            "verify-resume", *TINY, "--set", f"data.batch_size={B}", "--steps", "6",
            "--set", "distributed.strategy=fsdp", cwd=workdir,
        )
    )  # fmt: skip
    assert "result: EQUAL" in out and out.count("result:") == 1
