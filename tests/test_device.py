"""Device selection: the best device by default, clear errors for devices that are not there."""

from __future__ import annotations

import os

import pytest
import torch

from pellucid.device import physical_cores, pick_device
from pellucid.errors import PellucidError


def test_default_is_the_best_available_device():
    device = pick_device(None)
    if torch.cuda.is_available():
        assert device.type == "cuda"
    elif torch.backends.mps.is_available():
        assert device.type == "mps"
    else:
        assert device.type == "cpu"
        assert torch.get_num_threads() == physical_cores()


def test_cpu_uses_physical_cores():
    threads = torch.get_num_threads()
    try:
        assert pick_device("cpu") == torch.device("cpu")
        assert 1 <= torch.get_num_threads() == physical_cores() <= (os.cpu_count() or 1)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_missing_cuda_is_a_clear_error():
    with pytest.raises(PellucidError, match="sees no CUDA GPU.*--device cpu"):
        pick_device("cuda")


def test_nonsense_device_is_a_clear_error():
    with pytest.raises(PellucidError, match="'gpu0' is not a device"):
        pick_device("gpu0")
