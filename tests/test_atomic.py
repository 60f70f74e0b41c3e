"""hookloop.checkpoint.atomic, observed: what is fsynced before each rename, and that no
reader can ever see a partial checkpoint under its final name.

Two observers watch a real writer: one wraps `os.fsync`, `os.rename` and `os.replace` and
records their order; the other is an audit hook (`sys.addaudithook`) that, at every file
operation of the process (open, mkdir, rename, remove, rmtree, ...), checks what a reader
would see at that instant: every `step-N` directory verifies, and the `latest` pointer names
one that does (or, mid-swap, its `.old-` copy).
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from hookloop import checkpoint as ckpt
from hookloop.checkpoint.layout import BEST, LATEST
from hookloop.errors import CheckpointError
from hookloop.plugins.checkpoint import Checkpoint
from hookloop.plugins.eval import Eval

# --- observer 1: the order of fsyncs and renames ---------------------------------------------


def fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.fixture
def ops(monkeypatch):
    """The process's fsync / rename / replace calls, in order: ("fsync", path) and
    ("rename", src, dst) with absolute paths."""
    seen: list[tuple[str, ...]] = []
    real = {name: getattr(os, name) for name in ("fsync", "fdatasync", "rename", "replace")}

    def synced(name):
        def call(fd):
            seen.append(("fsync", fd_path(fd)))
            return real[name](fd)

        return call

    def renamed(name):
        def call(src, dst, *args, **kwargs):
            seen.append(("rename", os.path.abspath(src), os.path.abspath(dst)))
            return real[name](src, dst, *args, **kwargs)

        return call

    for name in ("fsync", "fdatasync"):
        monkeypatch.setattr(os, name, synced(name))
    for name in ("rename", "replace"):
        monkeypatch.setattr(os, name, renamed(name))
    return seen


def assert_written_then_renamed(seen, final: Path) -> None:
    """`final` came from one rename of a temporary directory, after every file in it and the
    directory itself were fsynced; its parent was fsynced after the rename."""
    final = str(final)
    renames = [i for i, op in enumerate(seen) if op[0] == "rename" and op[2] == final]
    assert renames, f"{final} was not renamed into place"
    index = renames[-1]
    tmp = seen[index][1]
    assert Path(tmp).parent == Path(final).parent and Path(tmp).name.startswith(".tmp-")
    before = {op[1] for op in seen[:index] if op[0] == "fsync"}
    names = sorted(os.listdir(final))
    assert names == ["model.safetensors", "optimizer.safetensors", "state.json"]
    unsynced = [n for n in names if f"{tmp}/{n}" not in before]
    assert not unsynced, f"renamed into place before fsync: {unsynced}"
    file_syncs = [
        i for i, op in enumerate(seen[:index]) if op[0] == "fsync" and op[1].startswith(tmp + "/")
    ]
    dir_syncs = [i for i, op in enumerate(seen[:index]) if op == ("fsync", tmp)]
    assert dir_syncs and dir_syncs[-1] > max(file_syncs), "directory not fsynced after its files"
    after = seen[index + 1 :]
    assert ("fsync", str(Path(final).parent)) in after, "parent not fsynced after the rename"


def assert_pointer_written_then_replaced(seen, checkpoints: Path, pointer: str, target: Path):
    dst = str(checkpoints / pointer)
    renames = [i for i, op in enumerate(seen) if op[0] == "rename" and op[2] == dst]
    assert renames, f"{dst} was not replaced"
    index = renames[-1]
    tmp = seen[index][1]
    assert ("fsync", tmp) in seen[:index], "pointer replaced before its file was fsynced"
    assert ("fsync", str(checkpoints)) in seen[index + 1 :], "pointer's directory not fsynced"
    target_rename = [i for i, op in enumerate(seen) if op[0] == "rename" and op[2] == str(target)]
    assert target_rename and target_rename[-1] < index, "pointer moved before its checkpoint"
    assert (checkpoints / pointer).read_text() == target.name + "\n"


def test_every_file_and_the_directory_are_fsynced_before_the_rename(make_engine, tmp_path, ops):
    engine = make_engine()
    engine.fit(max_steps=1)
    checkpoints = tmp_path.resolve() / "checkpoints"
    path = ckpt.save_checkpoint(engine, checkpoints / "step-00000001")
    assert_written_then_renamed(ops, path)
    assert_pointer_written_then_replaced(ops, checkpoints, LATEST, path)

    ops.clear()  # the same step again: the old directory is swapped out, the new one in
    ckpt.save_checkpoint(engine, path)
    assert_written_then_renamed(ops, path)
    old = str(checkpoints / ".old-step-00000001")
    swap = [i for i, op in enumerate(ops) if op[0] == "rename" and op[1:] == (str(path), old)]
    into = [i for i, op in enumerate(ops) if op[0] == "rename" and op[2] == str(path)]
    assert swap and swap[0] < into[0]
    assert not os.path.exists(old)


@pytest.mark.parametrize("background", [False, True])
def test_the_checkpoint_plugin_syncs_every_save_and_the_best_pointer(
    make_engine, tmp_path, ops, background
):
    plugin = Checkpoint(every_steps=2, keep_last=0, background=background)
    run_dir = tmp_path.resolve()
    engine = make_engine(batches=10, run_dir=run_dir, plugins=[Eval(every=2), plugin])
    engine.fit(max_steps=4)
    checkpoints = run_dir / "checkpoints"
    for step in (2, 4):
        assert_written_then_renamed(ops, checkpoints / ckpt.checkpoint_name(step))
    newest = checkpoints / ckpt.checkpoint_name(4)
    assert_pointer_written_then_replaced(ops, checkpoints, LATEST, newest)
    best = ckpt.read_pointer(checkpoints, BEST)
    assert best is not None
    assert_pointer_written_then_replaced(ops, checkpoints, BEST, best)


# --- observer 2: what a reader sees at every file operation -----------------------------------


class ReaderView:
    """An audit hook that checks a checkpoints folder at every file operation."""

    _installed = False
    _current: ReaderView | None = None
    _lock = threading.RLock()

    def __init__(self, checkpoints: Path) -> None:
        self.checkpoints = checkpoints
        self.checks = 0
        self.violations: list[str] = []
        self.busy = False

    @classmethod
    def _hook(cls, event: str, args: tuple) -> None:
        view = cls._current
        if view is None or not event.startswith(("open", "os.", "shutil.")):
            return
        with cls._lock:
            if view.busy:
                return  # the check's own reads
            view.busy = True
            try:
                view.check(event, args)
            finally:
                view.busy = False

    def check(self, event: str, args: tuple) -> None:
        if not self.checkpoints.is_dir():
            return
        self.checks += 1
        for path in ckpt.list_checkpoints(self.checkpoints):
            try:
                ckpt.verify_checkpoint(path)
            except CheckpointError as exc:
                self.violations.append(f"at {event}{args[:2]}: {exc}")
        pointed = ckpt.read_pointer(self.checkpoints, LATEST)
        if pointed is not None:
            old = self.checkpoints / f".old-{pointed.name}"
            candidates = [pointed] if pointed.exists() else [old]
            try:
                ckpt.verify_checkpoint(candidates[0])
            except CheckpointError as exc:
                self.violations.append(f"at {event}{args[:2]}: latest -> {exc}")

    @classmethod
    @contextmanager
    def watching(cls, checkpoints: Path):
        if not cls._installed:  # an audit hook cannot be removed: one, switched by _current
            sys.addaudithook(cls._hook)
            cls._installed = True
        view = cls(checkpoints)
        cls._current = view
        try:
            yield view
        finally:
            cls._current = None


def test_a_reader_never_sees_a_partial_checkpoint_at_any_file_operation(make_engine, tmp_path):
    engine = make_engine()
    checkpoints = tmp_path / "checkpoints"
    with ReaderView.watching(checkpoints) as view:
        for step in (1, 2):
            engine.fit(max_steps=step)
            ckpt.save_checkpoint(engine, checkpoints / ckpt.checkpoint_name(step))
        ckpt.save_checkpoint(engine, checkpoints / ckpt.checkpoint_name(2))  # swap in place
    assert not view.violations, view.violations[:3]
    assert view.checks >= 20  # the writer was observed at each of its operations
    assert [p.name for p in ckpt.list_checkpoints(checkpoints)] == [
        "step-00000001",
        "step-00000002",
    ]


@pytest.mark.parametrize("background", [False, True])
def test_the_plugin_with_pruning_never_exposes_a_partial_checkpoint(
    make_engine, tmp_path, background
):
    plugin = Checkpoint(every_steps=1, keep_last=2, background=background)
    engine = make_engine(batches=10, run_dir=tmp_path, plugins=[plugin])
    with ReaderView.watching(tmp_path / "checkpoints") as view:
        engine.fit(max_steps=5)
    assert not view.violations, view.violations[:3]
    assert view.checks >= 50
    left = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert left == ["latest", "step-00000004", "step-00000005"]  # nothing half-pruned either


# --- the file-level pieces, one by one -----------------------------------------------------


def test_recover_partial_removes_what_killed_writers_left_and_keeps_this_processes_work(tmp_path):
    from hookloop.checkpoint.atomic import recover_partial

    mine = f"-{os.getpid()}-abcd"
    for name in (
        "step-1",
        ".old-step-1",
        ".old-step-2",
        ".tmp-step-3-999999-ab",
        f".tmp-step-4{mine}",
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "state.json").write_text(name)
    (tmp_path / ".prune-step-0-999999-ab").mkdir()
    (tmp_path / ".pointer-latest-999999-ab").write_text("step-1\n")
    (tmp_path / f".pointer-best{mine}").write_text("step-1\n")
    (tmp_path / "latest").write_text("step-1\n")
    recover_partial(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f".pointer-best{mine}",  # a save of this process may be in flight: left alone
        f".tmp-step-4{mine}",
        "latest",
        "step-1",
        "step-2",  # killed mid-swap: the old copy is put back under its name
    ]
    assert (tmp_path / "step-1" / "state.json").read_text() == "step-1"  # not the stale copy
    assert (tmp_path / "step-2" / "state.json").read_text() == ".old-step-2"


def test_replace_dir_swaps_a_directory_in_even_over_a_stale_old_copy(tmp_path):
    from hookloop.checkpoint.atomic import replace_dir

    for name in ("new", "target", ".old-target"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text(name)
    replace_dir(tmp_path / "new", tmp_path / "target")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]
    assert (tmp_path / "target" / "f").read_text() == "new"


def test_the_write_delay_aid_sleeps_between_tensor_files(make_engine, tmp_path, monkeypatch):
    from hookloop.checkpoint import atomic

    slept = []
    monkeypatch.setattr(atomic.time, "sleep", slept.append)
    engine = make_engine()
    ckpt.save_checkpoint(engine, tmp_path / "a")
    assert slept == []
    monkeypatch.setenv(atomic.WRITE_DELAY_ENV, "0.25")
    ckpt.save_checkpoint(engine, tmp_path / "b")
    assert slept == [0.25, 0.25]  # after the model file and after the optimizer file


def test_a_pointer_that_cannot_be_replaced_still_names_the_previous_checkpoint(
    tmp_path, monkeypatch
):
    import errno

    from hookloop.checkpoint.atomic import read_pointer, write_pointer

    write_pointer(tmp_path, LATEST, "step-1")

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(CheckpointError) as info:
        write_pointer(tmp_path, LATEST, "step-2")
    assert str(info.value) == (
        f"could not update {tmp_path / LATEST}: No space left on device (is the disk full?); "
        "it still names the previous checkpoint"
    )
    assert read_pointer(tmp_path, LATEST) == tmp_path / "step-1"
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST]  # its temp file is gone


@pytest.mark.parametrize("content", [b"", b"\n", b"../elsewhere\n", b"a/b\n", b"\xff\xfe\n"])
def test_a_pointer_that_names_nothing_usable_reads_as_none(tmp_path, content):
    from hookloop.checkpoint.atomic import read_pointer

    assert read_pointer(tmp_path, LATEST) is None  # no pointer at all
    (tmp_path / LATEST).write_bytes(content)
    assert read_pointer(tmp_path, LATEST) is None
    (tmp_path / LATEST).write_bytes(b" step-7 \n")
    assert read_pointer(tmp_path, LATEST) == tmp_path / "step-7"


@pytest.mark.parametrize("wait", [True, False])
def test_remove_dir_takes_the_name_away_at_once_and_deletes_on_a_thread_if_asked(tmp_path, wait):
    import threading

    from hookloop.checkpoint.atomic import remove_dir

    (tmp_path / "step-00000001").mkdir()
    (tmp_path / "step-00000001" / "model.safetensors").write_bytes(b"x" * 4096)
    remove_dir(tmp_path / "step-00000001", wait=wait)
    assert not (tmp_path / "step-00000001").exists()  # never half-deleted under its name
    for thread in threading.enumerate():
        if thread.name == "hookloop-prune":
            thread.join(timeout=30)
    assert list(tmp_path.iterdir()) == []
    remove_dir(tmp_path / "step-00000001", wait=wait)  # already gone: nothing to do


# --- single files: config.toml, tokenizer.json, an export ----------------------------------


def test_replace_file_gives_the_new_content_whole_and_leaves_no_temporary_file(tmp_path, ops):
    from hookloop.checkpoint.atomic import replace_file

    path = tmp_path / "config.toml"
    assert replace_file(path, b"old\n") is True
    assert replace_file(path, b"new content\n") is True
    assert path.read_bytes() == b"new content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]
    # written beside it, fsynced, renamed over it, then the directory fsynced
    (_, tmp, dst), synced = ops[-2], ops[-3]
    assert dst == str(path) and Path(tmp).parent == tmp_path and Path(tmp).name.startswith(".")
    assert synced == ("fsync", tmp) and ops[-1] == ("fsync", str(tmp_path))


def test_replace_file_unless_equal_leaves_an_identical_file_untouched(tmp_path):
    from hookloop.checkpoint.atomic import replace_file

    path = tmp_path / "tokenizer.json"
    replace_file(path, b"{}")
    before = path.stat()
    assert replace_file(path, b"{}", unless_equal=True) is False
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert replace_file(path, b"{ }", unless_equal=True) is True
    assert path.read_bytes() == b"{ }"


def test_replace_file_that_fails_keeps_the_old_content_and_no_temporary_file(tmp_path, monkeypatch):
    import errno

    from hookloop.checkpoint.atomic import replace_file

    path = tmp_path / "config.toml"
    replace_file(path, b"old\n")

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match="No space left"):
        replace_file(path, b"new\n")
    assert path.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]
