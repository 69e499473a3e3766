"""Multi-process CPU training under ``torchrun`` (gloo): DDP matches one process; FSDP2 trains; DeepSpeed ZeRO."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aligngpt.training.config import resolve_config
from aligngpt.training.engine import train
from tests.training.conftest import finetune_records, quick_settings, write_json

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _settings(world, data: Path, out: Path, **extra) -> dict:
    return quick_settings(
        recipe="finetune", data=str(data), image_root=str(world["images"]), output_dir=str(out),
        model=str(world["model"]), learning_rate=1e-3, max_steps=4, group_by_modality_length=False, **extra,
    )  # fmt: skip


def _torchrun(settings: dict, tmp_path: Path) -> list[dict]:
    """Run ``python -m aligngpt.training`` on 2 CPU processes; returns the log history."""
    config = tmp_path / "run.yaml"
    import yaml

    config.write_text(yaml.safe_dump(settings))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "aligngpt.training", "--config", str(config)]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((Path(settings["output_dir"]) / "trainer_state.json").read_text())
    return state["log_history"]


def _curve(history: list[dict], key: str) -> list[float]:
    return [entry[key] for entry in history if "loss" in entry]


@pytest.fixture(scope="module")
def even_data(world, tmp_path_factory) -> Path:
    """8 records (7 with an image, 1 text-only): 2 global batches of 4 per epoch."""
    return write_json(tmp_path_factory.mktemp("ddp") / "ft8.json", finetune_records(copies=2)[:8])


def test_ddp_two_processes_match_one_process_with_the_same_global_batch(world, even_data, tmp_path):
    single = train(resolve_config(overrides=_settings(world, even_data, tmp_path / "one", per_device_train_batch_size=4)))
    history = _torchrun(_settings(world, even_data, tmp_path / "ddp", per_device_train_batch_size=2), tmp_path)
    assert _curve(history, "loss") == pytest.approx(single.losses, rel=1e-5)
    assert _curve(history, "grad_norm") == pytest.approx(_curve(single.log_history, "grad_norm"), rel=1e-4)
    a, b = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "ddp" / "model.safetensors"))
    assert all(torch.allclose(a[key], b[key], atol=1e-5) for key in a)


def test_fsdp_two_processes_train(world, even_data, tmp_path):
    settings = _settings(world, even_data, tmp_path / "fsdp", per_device_train_batch_size=2,
                         fsdp_config=str(REPO / "configs" / "fsdp.json"))  # fmt: skip
    history = _torchrun(settings, tmp_path)
    losses = _curve(history, "loss")
    assert len(losses) == 4 and losses[-1] < losses[0]
    before, after = load_file(str(world["model"] / "model.safetensors")), load_file(str(tmp_path / "fsdp" / "model.safetensors"))
    assert set(before) == set(after)
    assert not torch.equal(before["projector.0.weight"], after["projector.0.weight"])
    assert torch.equal(before["alignment.level_embeddings"], after["alignment.level_embeddings"])


@pytest.mark.deepspeed
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_two_processes_train_and_save(world, even_data, tmp_path, stage):
    out = tmp_path / stage
    settings = _settings(world, even_data, out, per_device_train_batch_size=2,
                         deepspeed=str(REPO / "configs" / f"{stage}.json"))  # fmt: skip
    history = _torchrun(settings, tmp_path)
    losses = _curve(history, "loss")
    assert len(losses) == 4 and losses[-1] < losses[0]
    before, after = load_file(str(world["model"] / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(before) == set(after)
    assert torch.equal(before["alignment.level_embeddings"], after["alignment.level_embeddings"])
    assert not torch.equal(before["projector.0.weight"], after["projector.0.weight"])
