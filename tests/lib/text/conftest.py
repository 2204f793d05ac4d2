"""Shared fixtures of the lib/text tests."""

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on a shared 2-core box, OpenMP sync between 2 threads costs more
    than it gains for these micro models (timings only; results are thread-independent here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
