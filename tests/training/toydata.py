"""Tiny LLaVA-format data for the training and dataset tests."""

from __future__ import annotations

import json
from pathlib import Path

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


def run(recipe: str, world, out, **settings):
    """Train ``recipe`` on the test world with quick settings (overridable); returns the ``TrainResult``."""
    from aligngpt.training.config import resolve_config
    from aligngpt.training.engine import train

    data = world["pretrain"] if recipe == "pretrain" else world["finetune"]
    base = dict(data=str(data), image_root=str(world["images"]), output_dir=str(out))
    return train(resolve_config(recipe, overrides=quick_settings(**{**base, **settings})))
