"""hookloop.plugins.stepvalues.hostcopy: the one device-to-host copy of the plugins."""

from __future__ import annotations

import torch

from hookloop.plugins.stepvalues.hostcopy import HostCopy, to_floats


def test_to_floats_keeps_numbers_and_scalar_tensors_in_the_order_given():
    values = {"a": torch.tensor(1.5), "b": 2, "skip": torch.ones(3), "c": True, "d": "text"}
    assert to_floats(values) == {"a": 1.5, "b": 2.0, "c": 1.0}
    assert list(to_floats(values)) == ["a", "b", "c"]


def test_a_buffered_copy_reuses_its_buffer_and_reads_each_start():
    copy = HostCopy(buffered=True)
    copy.start(torch.tensor([1.0, 2.0]))
    first = copy._host
    assert copy.landed and copy.read() == [1.0, 2.0]
    copy.start(torch.tensor([3.0, 4.0]))
    assert copy._host is first and copy.read() == [3.0, 4.0]


def test_an_unbuffered_copy_reads_the_values_given():
    copy = HostCopy()
    copy.start(torch.tensor([0.25, -1.0], dtype=torch.float64))
    assert copy.landed and copy.read() == [0.25, -1.0]
