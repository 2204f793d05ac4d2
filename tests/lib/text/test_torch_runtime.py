"""Torch runtime settings: the glibc malloc setting."""

from __future__ import annotations

import pytest
import torch

from sphere_assets.lib.text import entropy_model as em
from sphere_assets.lib.text import torch_runtime as rt
from tests.lib.text.micro_models import micro

# one intra-op thread for every test here (tests/lib/text/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_keep_freed_memory_is_applied_and_harmless():
    import platform

    applied = rt.keep_freed_memory()
    if platform.libc_ver()[0] == "glibc":
        assert applied
    model = em.build_model(micro()).eval()
    with torch.inference_mode():
        logits, _ = model(torch.arange(40)[None] % 200 + 4)
    assert torch.isfinite(logits).all()
