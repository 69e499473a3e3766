"""finetune-qlora on CPU (bitsandbytes' CPU 4-bit backend): what is quantised and what trains, the saved outputs,
resume, and the settings it refuses."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from aligngpt.training.config import resolve_config
from tests.helpers import require_module
from tests.training.toydata import quick_settings, run

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QLORA = dict(learning_rate=1e-2, lora_r=4, lora_alpha=8, lora_dropout=0.0)


@pytest.fixture(autouse=True)
def _needs_bitsandbytes():
    require_module("bitsandbytes")


def _config(world, tmp_path, **extra):
    settings = dict(
        data=str(world["finetune"]), image_root=str(world["images"]), output_dir=str(tmp_path / "out"),
        model=str(world["model"]), **QLORA,
    )  # fmt: skip
    return resolve_config("finetune-qlora", overrides=quick_settings(**{**settings, **extra}))


def _linear_names(module: nn.Module) -> set[str]:
    return {name for name, child in module.named_modules() if isinstance(child, nn.Linear)}


def test_only_the_llm_decoder_is_4_bit_and_lora_projector_gate_train(world, tmp_path):
    import bitsandbytes as bnb
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

    from aligngpt.training.lora import apply_lora
    from aligngpt.training.model_init import build_starting_point
    from aligngpt.training.qlora import quantize_language_model, quantized_module_names
    from aligngpt.training.recipes import RecipeOptions, get_recipe

    config = _config(world, tmp_path)
    recipe = get_recipe(config.recipe)
    model = build_starting_point(config, recipe).model
    llm = model.language_model
    decoder_linears = {f"model.language_model.{name}" for name in _linear_names(llm)}
    original = {name: param.detach().clone() for name, param in llm.named_parameters()}

    full = quantize_language_model(model, torch.device("cpu"), torch.float32)

    assert full is llm  # the full-precision LLM comes back untouched, for the final save
    assert all(torch.equal(param, original[name]) for name, param in full.named_parameters())
    quantized = set(quantized_module_names(model))
    assert quantized == decoder_linears and len(quantized) == len(LORA_TARGETS) * llm.config.num_hidden_layers
    for name in quantized:
        layer = model.get_submodule(name)
        assert layer.weight.dtype == torch.uint8 and layer.weight.quant_state.quant_type == "nf4"
    lm_head = model.lm_head  # a top-level module, outside the quantised decoder
    assert not isinstance(lm_head, bnb.nn.Linear4bit) and lm_head.weight.dtype == torch.float32
    for outside in (model.vision_tower, model.projector, model.alignment):
        assert not any(isinstance(child, bnb.nn.Linear4bit) for child in outside.modules())
        assert all(param.dtype == torch.float32 for param in outside.parameters())

    apply_lora(model, config.lora_r, config.lora_alpha, config.lora_dropout, list(LORA_TARGETS))
    wrapped = [child for child in model.language_model.modules() if isinstance(child, LoraLinear4bit)]
    assert len(wrapped) == len(quantized)  # LoRA sits on every 4-bit layer
    groups = recipe.apply(model, RecipeOptions(projector_lr_scale=config.projector_lr_scale))
    assert {group.name: group.lr_scale for group in groups} == {"lora": 1.0, "projector": 0.1, "gate": 1.0}
    trainable = {name.removeprefix("model.") for name, param in model.named_parameters() if param.requires_grad}
    lora = {name for name in trainable if name.startswith("language_model.")}
    assert lora and all(".lora_A." in name or ".lora_B." in name for name in lora)
    assert {name.split(".")[0] for name in trainable - lora} == {"projector", "alignment"}
    assert all(name.startswith("alignment.gate.") for name in trainable - lora if name.startswith("alignment."))


def test_qlora_trains_and_saves_the_full_precision_base_with_the_adapter(world, tmp_path):
    from aligngpt.training.lora import LORA_DIR, merge_lora

    out = tmp_path / "qlora"
    result = run("finetune-qlora", world, out, model=str(world["model"]), max_steps=3, **QLORA)
    assert result.losses[-1] < result.losses[0]

    before, base = load_file(str(world["model"] / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(base) == set(before)
    unchanged = [key for key in before if key.startswith(("language_model.", "vision_tower.", "alignment.level"))]
    assert all(base[key].dtype == before[key].dtype and torch.equal(base[key], before[key]) for key in unchanged)
    assert not torch.equal(base["projector.0.weight"], before["projector.0.weight"])
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    adapter = load_file(str(out / LORA_DIR / "adapter_model.safetensors"))
    assert any(".lora_B." in key and tensor.abs().sum() > 0 for key, tensor in adapter.items())

    merged = load_file(str(merge_lora(out, tmp_path / "merged") / "model.safetensors"))
    assert set(merged) == set(before)
    assert any(not torch.equal(merged[key], base[key]) for key in before if key.startswith("language_model."))


def test_qlora_resumes_from_a_checkpoint_holding_4_bit_layers(world, tmp_path, monkeypatch):
    import aligngpt.training.engine as engine
    from aligngpt.training.lora import LORA_DIR

    settings = dict(model=str(world["model"]), max_steps=4, save_steps=2, **QLORA)
    whole = tmp_path / "whole"
    run("finetune-qlora", world, whole, **settings)
    # the same run stopped after its step-2 checkpoint: copy that checkpoint only, not step 4 nor the final outputs
    interrupted = tmp_path / "interrupted"
    shutil.copytree(whole, interrupted, ignore=lambda folder, names: [n for n in names if n == "checkpoint-4"])
    (interrupted / "model.safetensors").unlink()
    shutil.rmtree(interrupted / LORA_DIR)
    used = []
    original = engine.find_resume_checkpoint
    monkeypatch.setattr(engine, "find_resume_checkpoint", lambda folder: used.append(original(folder)) or used[-1])

    run("finetune-qlora", world, interrupted, resume=True, **settings)
    assert used and used[0] == interrupted / "checkpoints" / "checkpoint-2"
    for name in ("model.safetensors", f"{LORA_DIR}/adapter_model.safetensors"):
        a, b = load_file(str(whole / name)), load_file(str(interrupted / name))
        assert set(a) == set(b) and all(torch.equal(a[key], b[key]) for key in a)


def test_qlora_refuses_zero3_and_names_what_is_missing(world, tmp_path, monkeypatch):
    import bitsandbytes as bnb

    import aligngpt.training.config as config_module
    from aligngpt.training.qlora import QLoraUnavailableError, check_available

    zero3, zero2 = tmp_path / "z3.json", tmp_path / "z2.json"
    zero3.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    zero2.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    with pytest.raises(ValueError, match=r"finetune-qlora cannot run under DeepSpeed ZeRO-3 \(.*z3\.json\).*ZeRO-2"):
        _config(world, tmp_path, deepspeed=str(zero3))
    assert _config(world, tmp_path, deepspeed=str(zero2)).deepspeed == str(zero2)
    with pytest.raises(ValueError, match=r"DeepSpeed config .*absent\.json"):
        _config(world, tmp_path, deepspeed=str(tmp_path / "absent.json"))

    monkeypatch.setattr(bnb, "supported_torch_devices", {"cuda"})
    with pytest.raises(QLoraUnavailableError, match=r"no 4-bit backend for cpu \(it supports: cuda\)"):
        check_available(torch.device("cpu"))
    real_find_spec = config_module.importlib.util.find_spec
    monkeypatch.setattr(
        config_module.importlib.util, "find_spec", lambda name: None if name == "bitsandbytes" else real_find_spec(name)
    )
    with pytest.raises(ValueError, match=r"needs bitsandbytes, which is not installed: pip install 'aligngpt\[qlora\]"):
        _config(world, tmp_path)
