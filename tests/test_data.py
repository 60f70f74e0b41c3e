"""Memory-mapped token datasets: window alignment, exact mid-epoch resume, id range checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hookloop.errors import DataError
from hookloop.lm.data import TokenDataset, check_token_range


def token_file(tmp_path, tokens, dtype="uint16"):
    path = tmp_path / "tokens.bin"
    np.asarray(tokens, dtype=dtype).tofile(path)
    return path


def test_sequential_windows_follow_the_seed_alignment(tmp_path):
    # N = 12, T = 4: (N-1)//T = 2 windows; the seed's third window would need token 12
    path = token_file(tmp_path, range(12))
    data = TokenDataset(path, seq_len=4, batch_size=1, sampling="sequential", shuffle=False)
    assert data.num_windows == 2 and len(data) == 2
    (x0, y0), (x1, y1) = list(data)
    assert x0.tolist() == [[0, 1, 2, 3]] and y0.tolist() == [[1, 2, 3, 4]]
    assert x1.tolist() == [[4, 5, 6, 7]] and y1.tolist() == [[5, 6, 7, 8]]
    assert x0.dtype == y0.dtype == torch.int64


def test_sequential_last_partial_batch_is_kept_only_without_drop_last(tmp_path):
    path = token_file(tmp_path, range(41))  # 10 windows of 4
    kept = TokenDataset(path, seq_len=4, batch_size=3, sampling="sequential", drop_last=False)
    dropped = TokenDataset(path, seq_len=4, batch_size=3, sampling="sequential")
    assert [b[0].shape[0] for b in kept] == [3, 3, 3, 1]
    assert len(dropped) == 3
    starts = sorted(int(x[0]) for b in kept for x in b[0])
    assert starts == list(range(0, 40, 4))  # every window exactly once


def test_shuffled_order_depends_on_seed_and_epoch_only(tmp_path):
    path = token_file(tmp_path, range(401))
    kw = dict(seq_len=4, batch_size=5, sampling="sequential", seed=3)
    a, b = TokenDataset(path, **kw), TokenDataset(path, **kw)
    first = [x for x, _ in a.iter_epoch(0)]
    assert all(
        torch.equal(p, q) for p, q in zip(first, [x for x, _ in b.iter_epoch(0)], strict=True)
    )
    second = [x for x, _ in a.iter_epoch(1)]
    assert not all(torch.equal(p, q) for p, q in zip(first, second, strict=True))


@pytest.mark.parametrize("sampling", ["random", "sequential"])
def test_iter_epoch_from_start_equals_the_tail_of_the_full_epoch(tmp_path, sampling):
    path = token_file(tmp_path, np.arange(1000) % 50)
    data = TokenDataset(
        path, seq_len=8, batch_size=4, sampling=sampling, seed=7, batches_per_epoch=20
    )
    full = list(data.iter_epoch(2, 0))
    assert len(full) == 20
    for start in (1, 7, 19, 20):
        tail = list(data.iter_epoch(2, start))
        assert len(tail) == 20 - start
        for (x, y), (fx, fy) in zip(tail, full[start:], strict=True):
            assert torch.equal(x, fx) and torch.equal(y, fy)


def test_random_windows_are_shifted_pairs_within_bounds(tmp_path):
    path = token_file(tmp_path, range(100))
    data = TokenDataset(path, seq_len=10, batch_size=64, sampling="random", batches_per_epoch=5)
    for x, y in data.iter_epoch(0):
        assert x.shape == y.shape == (64, 10)
        assert torch.equal(y - x, torch.ones_like(x))  # tokens are consecutive ints
        assert int(y.max()) <= 99
    assert len(TokenDataset(path, seq_len=10, batch_size=3)) == (99 // 10) // 3


def test_out_of_range_ids_are_a_data_error_at_load(tmp_path):
    path = token_file(tmp_path, [1, 2, 70, 3, 4, 5])
    with pytest.raises(DataError, match="holds id 70, outside the vocabulary of 65 ids"):
        TokenDataset(path, seq_len=2, batch_size=1, vocab_size=65)
    assert check_token_range(path, "uint16", 71) == 70


def test_uint32_files(tmp_path):
    path = token_file(tmp_path, [70000, 1, 2, 3, 4], dtype="uint32")
    ((x, y),) = list(
        TokenDataset(
            path, seq_len=4, batch_size=1, dtype="uint32", vocab_size=70001, sampling="sequential"
        )
    )
    assert x.tolist() == [[70000, 1, 2, 3]]


def test_bad_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        TokenDataset(tmp_path / "nope.bin", seq_len=4, batch_size=1)
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x00" * 7)
    with pytest.raises(DataError, match="not a whole number of uint16 ids"):
        TokenDataset(odd, seq_len=2, batch_size=1)
    short = token_file(tmp_path, range(4))
    with pytest.raises(DataError, match="too few for one window"):
        TokenDataset(short, seq_len=4, batch_size=1)
    with pytest.raises(DataError, match="lower data.batch_size"):
        TokenDataset(short, seq_len=1, batch_size=8, sampling="sequential")


@pytest.mark.parametrize(
    ("sampling", "shuffle", "drop_last"),
    [("random", True, True), ("sequential", True, True), ("sequential", False, False)],
)
def test_ranks_read_slices_of_the_one_rank_batch(tmp_path, sampling, shuffle, drop_last):
    """2 ranks x B read, batch for batch and in rank order, the windows 1 rank x 2B reads;
    also from a resumed position, and for the short last batch of a validation pass."""
    path = token_file(tmp_path, np.arange(1000) % 50)
    common = dict(seq_len=8, sampling=sampling, shuffle=shuffle, drop_last=drop_last, seed=3)
    one = TokenDataset(path, batch_size=6, **common)
    ranks = [TokenDataset(path, batch_size=3, rank=r, world_size=2, **common) for r in (0, 1)]
    assert len(one) == len(ranks[0]) == len(ranks[1])
    for epoch, start in ((0, 0), (1, 2)):
        whole = list(one.iter_epoch(epoch, start))
        parts = [list(d.iter_epoch(epoch, start)) for d in ranks]
        assert len(whole) == len(parts[0]) == len(parts[1]) > 0
        for (x, y), (x0, y0), (x1, y1) in zip(whole, *parts, strict=True):
            assert torch.equal(x, torch.cat([x0, x1])) and torch.equal(y, torch.cat([y0, y1]))
    if not drop_last:  # 124 windows: the last batch of 6 has 4, so rank 1 gets 1
        *_, (x0, _) = ranks[0].iter_epoch(0)
        *_, (x1, _) = ranks[1].iter_epoch(0)
        assert len(x0) == 3 and len(x1) == 1


def test_a_rank_outside_the_world_is_a_data_error(tmp_path):
    path = token_file(tmp_path, np.arange(100) % 50)
    with pytest.raises(DataError, match="rank 2 is outside world_size 2"):
        TokenDataset(path, seq_len=4, batch_size=2, rank=2, world_size=2)


# --- memory: the token file is mapped, never loaded, and its pages do not pile up --------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def test_reading_a_file_much_larger_than_the_bound_keeps_resident_memory_flat(tmp_path):
    mib = 1024 * 1024
    size, bound = 64 * mib, 8 * mib  # every window of a 64 MiB file, read with < 8 MiB growth
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        for start in range(0, size // 2, mib):
            (np.arange(start, start + mib, dtype=np.uint32) % 50_000).astype("<u2").tofile(f)
    data = TokenDataset(path, seq_len=4096, batch_size=8, sampling="sequential", shuffle=False)
    assert data.num_tokens == size // 2 and len(data) >= 1000

    exact_peak = _reset_peak_rss()
    baseline = peak = _status_kib("VmRSS")
    seen = 0
    for i, (x, y) in enumerate(data):
        if i % 8 == 0:
            peak = max(peak, _status_kib("VmRSS"))
        seen += x.numel()
        if i == 123:  # the right tokens, not just few pages: window w starts at token w*T
            w = i * 8 + 5
            expected = (np.arange(w * 4096, w * 4096 + 4097) % 50_000).astype(np.int64)
            assert x[5].tolist() == expected[:-1].tolist()
            assert y[5].tolist() == expected[1:].tolist()
    if exact_peak:
        peak = max(peak, _status_kib("VmHWM"))
    assert seen == len(data) * 8 * 4096 >= size // 2 - 8 * 4096 * 2
    growth = (peak - baseline) * 1024
    assert growth < bound, f"resident memory grew by {growth / mib:.1f} MiB reading 64 MiB"
