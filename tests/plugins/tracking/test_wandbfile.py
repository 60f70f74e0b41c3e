"""hookloop.plugins.tracking.wandbfile: finding the offline run files of a W&B run."""

from __future__ import annotations

from hookloop.plugins.tracking.wandbfile import offline_run_files


def test_offline_run_files_orders_the_starts_of_a_run(tmp_path):
    for name in (
        "offline-run-20260102_030405-abc-1",
        "offline-run-20260102_030405-abc",
        "offline-run-20260102_030405-abc-10",
        "offline-run-20260102_030405-abc-2",
        "offline-run-20260101_000000-abc",
        "offline-run-20260101_000000-xabc",  # another run whose id ends the same
    ):
        folder = tmp_path / name
        folder.mkdir()
        (folder / f"run-{name.split('-')[3]}.wandb").write_bytes(b"")
    names = [p.parent.name.removeprefix("offline-run-") for p in offline_run_files(tmp_path, "abc")]
    assert names == [
        "20260101_000000-abc",
        "20260102_030405-abc",
        "20260102_030405-abc-1",
        "20260102_030405-abc-2",
        "20260102_030405-abc-10",
    ]
