"""Checkpoint import: the CLI, stage-1 folders, LLaVA-1.5 layouts and key errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from aligngpt.cli import app
from aligngpt.convert.official import ConversionError, convert_official, rename_official_key
from aligngpt.modeling import AlignGPTForConditionalGeneration
from tests.helpers import OFFICIAL

FINETUNE = OFFICIAL / "checkpoints" / "aligngpt_tiny_finetune"
PRETRAIN = OFFICIAL / "checkpoints" / "aligngpt_tiny_pretrain"
TOWER = OFFICIAL / "clip_vision_tiny"


def test_cli_converts_a_full_checkpoint_to_safetensors(tmp_path):
    out = tmp_path / "converted"
    result = CliRunner().invoke(app, ["convert", "official", str(FINETUNE), str(out), "--vision-tower", str(TOWER)])
    assert result.exit_code == 0, result.output
    assert "alignment_mode=adaptive" in result.output and "image tokens=576" in result.output
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    model = AlignGPTForConditionalGeneration.from_pretrained(out)
    official = torch.load(FINETUNE / "pytorch_model.bin", weights_only=True)
    assert torch.equal(model.alignment.level_embeddings, official["align_indicators.indicator_embs"])
    assert torch.equal(model.alignment.gate[2].weight, official["gated_weight_layer.mlp.2.weight"])
    assert torch.equal(model.projector[2].bias, official["mm_projector.2.bias"])
    # The tower comes from the checkpoint's own keys and equals the separately stored CLIP.
    tower = torch.load(TOWER / "pytorch_model.bin", weights_only=True)
    key = next(k for k in tower if k.endswith("patch_embedding.weight"))
    assert torch.equal(model.vision_tower.embeddings.patch_embedding.weight, tower[key])


def test_stage1_folder_needs_the_base_llm(tmp_path, monkeypatch):
    monkeypatch.chdir(OFFICIAL)
    result = CliRunner().invoke(app, ["convert", "official", str(PRETRAIN), str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "--base-llm" in result.output
    result = CliRunner().invoke(
        app, ["convert", "official", str(PRETRAIN), str(tmp_path / "y"), "--base-llm", str(OFFICIAL / "base_llm")]
    )
    assert result.exit_code == 0, result.output
    assert "stage-1 checkpoint has no gate" in result.output


def test_relative_vision_tower_resolves_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # "clip_vision_tiny" does not exist here
    with pytest.raises(OSError):
        convert_official(FINETUNE, None)
    monkeypatch.chdir(OFFICIAL)
    model, _, _ = convert_official(FINETUNE, None)
    assert model.config.num_image_tokens == 576


def _llava_checkpoint(tmp_path):
    """The fixture rewritten in the LLaVA-1.5 layout: modules under ``model.``, no alignment parts."""
    folder = tmp_path / "llava"
    folder.mkdir()
    config = json.loads((FINETUNE / "config.json").read_text())
    config["model_type"] = "llava_llama"
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(FINETUNE / name, folder / name)
    state = torch.load(FINETUNE / "pytorch_model.bin", weights_only=True)
    llava = {}
    for key, value in state.items():
        if key.startswith(("align_indicators", "gated_weight_layer")):
            continue
        if key.startswith(("mm_projector", "vision_tower")):
            key = "model." + key
        llava[key] = value
    torch.save(llava, folder / "pytorch_model.bin")
    return folder, state


def test_llava_15_checkpoints_load_as_plain_llava(tmp_path):
    folder, state = _llava_checkpoint(tmp_path)
    model, processor, _ = convert_official(folder, tmp_path / "out", vision_tower=TOWER)
    assert model.config.alignment_mode == "none" and model.alignment is None
    assert not processor.use_alignment_token
    assert torch.equal(model.projector[0].weight, state["mm_projector.0.weight"])
    reloaded = AlignGPTForConditionalGeneration.from_pretrained(tmp_path / "out")
    assert reloaded.config.alignment_mode == "none"


def test_unknown_or_missing_keys_are_named(tmp_path):
    with pytest.raises(ConversionError, match="unknown official checkpoint key 'foo.bar'"):
        rename_official_key("foo.bar")
    assert rename_official_key("model.layers.0.self_attn.rotary_emb.inv_freq") is None
    folder = tmp_path / "broken"
    shutil.copytree(FINETUNE, folder)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del state["gated_weight_layer.mlp.0.bias"]
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ConversionError, match=r"missing keys \['model.alignment.gate.0.bias'\]"):
        convert_official(folder, None, vision_tower=TOWER)
    with pytest.raises(ConversionError, match="not an official checkpoint"):
        convert_official(tmp_path, None)
