"""Tiny models and tiny LLaVA-format data for the training tests (built once per session)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def write_images(root: Path) -> list[str]:
    """One flat-colour 16x16 image per colour (+ a 24x12 one to exercise padding)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    names = []
    for name, rgb in COLOURS.items():
        Image.new("RGB", (16, 16), rgb).save(root / f"{name}.png")
        names.append(f"{name}.png")
    Image.new("RGB", (24, 12), COLOURS["red"]).save(root / "wide_red.png")
    names.append("wide_red.png")
    return names


def pretrain_records(copies: int = 2) -> list[dict]:
    records = []
    for copy in range(copies):
        for level, name in enumerate(COLOURS):
            records.append(
                {
                    "id": f"p{copy}-{name}",
                    "image": f"{name}.png",
                    "conversations": [
                        {"from": "human", "value": "Describe the image.\n<image>"},
                        {"from": "gpt", "value": f"a {name} square"},
                    ],
                    "similarity": (level * 2 + copy) % 8,
                }
            )
    return records


def finetune_records(copies: int = 2) -> list[dict]:
    records = []
    for copy in range(copies):
        for name in COLOURS:
            records.append(
                {
                    "id": f"f{copy}-{name}",
                    "image": f"{name}.png",
                    "conversations": [
                        {"from": "human", "value": "<image>\nWhat colour is it?"},
                        {"from": "gpt", "value": f"It is {name}."},
                        {"from": "human", "value": "Sure?"},
                        {"from": "gpt", "value": "Yes."},
                    ],
                }
            )
        records.append(
            {
                "id": f"t{copy}",
                "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi there."}],
            }
        )
    return records


def write_json(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records, indent=1))
    return path


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


def quick_settings(**overrides) -> dict:
    """Fast settings for tests: tiny batches, few steps, no checkpoints unless asked, CPU, fp32."""
    settings = dict(
        global_batch_size=4,
        per_device_train_batch_size=4,
        max_steps=6,
        warmup_ratio=0.0,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_steps=1000,
        progress=False,
        gradient_checkpointing=False,
        torch_threads=1,
        use_cpu=True,
        precision="fp32",
    )
    settings.update(overrides)
    return settings
