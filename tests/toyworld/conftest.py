"""Shared fixtures: one smoke-size model zoo and one small dataset per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def smoke_zoo(tmp_path_factory):
    from aligngpt.toyworld.zoo import build_zoo

    out = tmp_path_factory.mktemp("zoo")
    record = build_zoo(out, seed=0, size="smoke", threads=1, progress=False)
    return out, record


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    from aligngpt.toyworld.dataset import write_dataset

    out = tmp_path_factory.mktemp("world")
    write_dataset(out, seed=5, n_pretrain=80, n_finetune=80, n_eval=20, progress=False)
    return out
