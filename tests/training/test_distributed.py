"""Multi-process CPU training under ``torchrun`` (gloo): DDP matches one process; FSDP2 trains; DeepSpeed ZeRO."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aligngpt.training.config import resolve_config
from aligngpt.training.engine import train
from tests.helpers import require_module, subprocess_env
from tests.training.toydata import finetune_records, quick_settings, write_json

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _settings(world, data: Path, out: Path, **extra) -> dict:
    base = dict(
        recipe="finetune", data=str(data), image_root=str(world["images"]), output_dir=str(out),
        model=str(world["model"]), learning_rate=1e-3, max_steps=4, group_by_modality_length=False,
    )  # fmt: skip
    return quick_settings(**{**base, **extra})


def _torchrun(settings: dict, tmp_path: Path, timeout: int = 300) -> list[dict]:
    """Run ``python -m aligngpt.training`` on 2 CPU processes; returns the log history."""
    config = tmp_path / "run.yaml"
    import yaml

    config.write_text(yaml.safe_dump(settings))
    env = subprocess_env(OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--tee", "3", "-m", "aligngpt.training", "--config", str(config)]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    (tmp_path / "torchrun.log").write_text(done.stdout + done.stderr)  # every rank's lines, tagged [rank]
    assert done.returncode == 0, done.stderr[-6000:]
    state = json.loads((Path(settings["output_dir"]) / "trainer_state.json").read_text())
    return state["log_history"]


def _curve(history: list[dict], key: str) -> list[float]:
    return [entry[key] for entry in history if "loss" in entry]


@pytest.fixture(scope="module")
def even_data(world, tmp_path_factory) -> Path:
    """8 records (6 with an image, 2 text-only): 2 global batches of 4 per epoch; with modality grouping one
    micro-batch per epoch is text-only (so the image path gets no gradient there)."""
    records = finetune_records(copies=2)
    return write_json(tmp_path_factory.mktemp("ddp") / "ft8.json", records[:5] + records[5:7] + records[9:])


def test_ddp_two_processes_match_one_process_with_the_same_global_batch(world, even_data, tmp_path):
    # same global batch 4 and the same micro-batches: 2 ranks x 2 vs 1 process x 2 x 2 accumulation steps
    one = _settings(world, even_data, tmp_path / "one", per_device_train_batch_size=2, gradient_accumulation_steps=2,
                    group_by_modality_length=True)  # fmt: skip
    single = train(resolve_config(overrides=one))
    ddp = _settings(world, even_data, tmp_path / "ddp", per_device_train_batch_size=2, group_by_modality_length=True)
    history = _torchrun(ddp, tmp_path)
    assert _curve(history, "loss") == pytest.approx(single.losses, rel=1e-5)
    assert _curve(history, "grad_norm") == pytest.approx(_curve(single.log_history, "grad_norm"), rel=1e-4)
    a, b = (
        load_file(str(tmp_path / "one" / "model.safetensors")),
        load_file(str(tmp_path / "ddp" / "model.safetensors")),
    )
    assert all(torch.allclose(a[key], b[key], atol=1e-5) for key in a)


def test_fsdp_two_processes_train(world, even_data, tmp_path):
    settings = _settings(world, even_data, tmp_path / "fsdp", per_device_train_batch_size=2,
                         fsdp_config=str(REPO / "configs" / "fsdp.json"))  # fmt: skip
    history = _torchrun(settings, tmp_path)
    losses = _curve(history, "loss")
    assert len(losses) == 4 and losses[-1] < losses[0]
    before, after = (
        load_file(str(world["model"] / "model.safetensors")),
        load_file(str(tmp_path / "fsdp" / "model.safetensors")),
    )
    assert set(before) == set(after)
    assert not torch.equal(before["projector.0.weight"], after["projector.0.weight"])
    assert torch.equal(before["alignment.level_embeddings"], after["alignment.level_embeddings"])


@pytest.mark.deepspeed
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_two_processes_train_and_save(world, even_data, tmp_path, stage):
    require_module("deepspeed")
    from aligngpt.training.adapter import save_stage1_adapter

    before = load_file(str(world["model"] / "model.safetensors"))
    shifted = {key: value + 0.5 for key, value in before.items()}  # a stage-1 adapter that differs from the model
    save_stage1_adapter(shifted, tmp_path / "stage1")
    out = tmp_path / stage
    settings = _settings(world, even_data, out, per_device_train_batch_size=2,
                         deepspeed=str(REPO / "configs" / f"{stage}.json"),
                         stage1_adapter=str(tmp_path / "stage1" / "mm_projector_align.bin"))  # fmt: skip
    history = _torchrun(settings, tmp_path, timeout=1200)  # a cold DeepSpeed op build takes minutes
    losses = _curve(history, "loss")
    assert len(losses) == 4 and losses[-1] < losses[0]
    from aligngpt.modeling import AlignGPTForConditionalGeneration

    # ZeRO-3 saves the gathered weights under raw module paths; loading maps them, so compare loaded models
    model, info = AlignGPTForConditionalGeneration.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    after = model.state_dict()
    # the adapter was loaded into (gathered) parameters; the frozen level table was saved (gathered) unchanged
    # module names are the saved names under the base model's prefix
    assert torch.equal(after["model.alignment.level_embeddings"], shifted["alignment.level_embeddings"])
    assert not torch.equal(after["model.projector.0.weight"], shifted["projector.0.weight"])
    tower = [key for key in before if key.startswith("vision_tower.")]
    assert tower and all(torch.equal(after[f"model.{key}"], before[key]) for key in tower)


@pytest.mark.deepspeed
def test_qlora_trains_under_deepspeed_zero2(world, even_data, tmp_path):
    require_module("deepspeed")
    require_module("bitsandbytes")
    # ZeRO-3 is refused for finetune-qlora (each device loads the 4-bit LLM whole); ZeRO-2 is the official LoRA setup
    qlora = dict(recipe="finetune-qlora", lora_r=4, lora_alpha=8, learning_rate=1e-2, per_device_train_batch_size=2)
    single = train(resolve_config(overrides=_settings(world, even_data, tmp_path / "one", max_steps=1,
                                                      gradient_accumulation_steps=2, **qlora)))  # fmt: skip
    out = tmp_path / "zero2"
    zero2 = _settings(world, even_data, out, deepspeed=str(REPO / "configs" / "zero2.json"), **qlora)
    losses = _curve(_torchrun(zero2, tmp_path, timeout=1200), "loss")
    assert losses[0] == pytest.approx(single.losses[0], rel=1e-5)  # the same 4-bit model and batch on both ranks
    assert len(losses) == 4 and losses[-1] < losses[0]
    before, after = (
        load_file(str(world["model"] / "model.safetensors")),
        load_file(str(out / "model.safetensors")),
    )
    llm = [key for key in before if key.startswith("language_model.")]
    assert set(after) == set(before) and all(torch.equal(after[key], before[key]) for key in llm)  # full-precision base
    assert not torch.equal(after["projector.0.weight"], before["projector.0.weight"])
    adapter = load_file(str(out / "lora_adapter" / "adapter_model.safetensors"))
    assert any(".lora_B." in key and tensor.abs().sum() > 0 for key, tensor in adapter.items())
