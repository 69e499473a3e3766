"""Tiny models and tiny LLaVA-format data for the training tests (built once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.training.toydata import finetune_records, pretrain_records, write_images, write_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> dict[str, Path]:
    """Tiny model (CLIP 16 image tokens + LLaMA), images and pretrain / finetune data files."""
    from tests.helpers import tiny_model_dir

    root = tmp_path_factory.mktemp("train_world")
    model = tiny_model_dir(root / "tiny")
    images = root / "images"
    write_images(images)
    return {
        "root": root,
        "model": model,
        "parts": root / "tiny" / "parts",
        "images": images,
        "pretrain": write_json(root / "pretrain.json", pretrain_records()),
        "finetune": write_json(root / "finetune.json", finetune_records()),
    }
