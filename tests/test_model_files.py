"""Model folders are checked before loading: missing folders, truncated or damaged weight and JSON files are named."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from aligngpt.model_files import DamagedModelError, ModelNotFoundError, check_model_source, verify_model_folder


@pytest.fixture
def folder(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "aligngpt"}))
    save_file({"a": torch.zeros(64), "b": torch.ones(3, 5)}, str(model / "model.safetensors"))
    torch.save({"w": torch.zeros(8)}, model / "extra.bin")
    return model


def test_a_sound_folder_passes(folder):
    verify_model_folder(folder)


@pytest.mark.parametrize("keep", [4, 20, -30])
def test_truncated_safetensors_are_named(folder, keep):
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:keep])
    with pytest.raises(DamagedModelError, match=f"{weights} is truncated"):
        verify_model_folder(folder)


def test_safetensors_with_extra_bytes_are_named(folder):
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes() + b"\0" * 10)
    with pytest.raises(DamagedModelError, match="more than the"):
        verify_model_folder(folder)


def test_broken_json_is_named_with_its_position(folder):
    (folder / "config.json").write_text('{"model_type": "aligngpt",')
    with pytest.raises(DamagedModelError, match=r"config\.json is not valid JSON: .* \(line 1, column 27\)"):
        verify_model_folder(folder)


def test_a_missing_shard_is_named(folder):
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    with pytest.raises(DamagedModelError, match="model-00002-of-00002.safetensors is missing"):
        verify_model_folder(folder)


def test_a_truncated_torch_file_is_named(folder):
    weights = folder / "extra.bin"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(DamagedModelError, match=f"{weights} is truncated or damaged"):
        verify_model_folder(folder)


def test_model_sources(folder, tmp_path, monkeypatch):
    from huggingface_hub import constants

    check_model_source(folder)
    with pytest.raises(ModelNotFoundError, match="is a file; a model is a folder"):
        check_model_source(folder / "config.json")
    with pytest.raises(ModelNotFoundError, match=r"^model folder \S+/nowhere does not exist$"):
        check_model_source(tmp_path / "nowhere")  # an absolute path is never a hub id: no hub look-up
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE is set"):
        check_model_source("some-org/some-model")
