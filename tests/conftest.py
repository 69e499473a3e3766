"""Suite-wide hygiene: a test that changes torch's thread count (an in-process training or demo job does) hands the
next test torch's default back, so float results never depend on which tests ran before."""

from __future__ import annotations

import pytest
import torch

DEFAULT_TORCH_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    yield
    if torch.get_num_threads() != DEFAULT_TORCH_THREADS:
        torch.set_num_threads(DEFAULT_TORCH_THREADS)
