"""The smoke-size model zoo: tokenizer, CLIP and LLaMA reload as ordinary HF folders and behave."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPModel,
    CLIPVisionModel,
    LlamaForCausalLM,
)

from aligngpt.toyworld.dataset import write_dataset
from aligngpt.toyworld.render import image_to_array
from aligngpt.toyworld.samples import scene_and_image
from aligngpt.toyworld.world import WorldConfig
from aligngpt.toyworld.zoo import SIZES, build_zoo
from aligngpt.toyworld.zoo.clip import to_pixels
from aligngpt.toyworld.zoo.corpus import TEMPLATE_STRINGS, VICUNA_SYSTEM, lm_texts, vicuna_v1, vocabulary_strings
from aligngpt.toyworld.zoo.parts import build_part
from aligngpt.toyworld.zoo.stats import spearman


def _world_strings(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("strings")
    write_dataset(root, seed=9, n_pretrain=40, n_finetune=40, n_eval=5, progress=False)
    texts = [t["value"] for r in json.loads((root / "finetune.json").read_text()) for t in r["conversations"]]
    texts += [t["value"] for r in json.loads((root / "pretrain.json").read_text()) for t in r["conversations"]]
    for line in (root / "eval" / "vqa" / "questions.jsonl").read_text().splitlines():
        texts.append(json.loads(line)["text"])
    return texts + vocabulary_strings() + list(lm_texts(9, "strings", 40, WorldConfig()))


@pytest.fixture(scope="module")
def world_strings(tmp_path_factory):
    return _world_strings(tmp_path_factory)


@pytest.mark.parametrize("part", ["tokenizer", "clip", "llama"])
def test_tokenizer_round_trips_world_and_template_text_without_unk(smoke_zoo, world_strings, part):
    zoo, _ = smoke_zoo
    tok = AutoTokenizer.from_pretrained(zoo / part)
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2, 3)
    for text in world_strings:
        for chunk in text.split("<image>"):  # the model tokenises the chunks around <image> separately
            ids = tok(chunk, add_special_tokens=False)["input_ids"]
            assert tok.unk_token_id not in ids, chunk
            assert tok.decode(ids) == chunk
    template = vicuna_v1([], with_image=False) + "USER: hi ASSISTANT: there</s>"
    ids = tok(template, add_special_tokens=False)["input_ids"]
    assert ids[-1] == tok.eos_token_id and ids.count(tok.eos_token_id) == 1
    assert tok.decode(ids) == template
    for text in TEMPLATE_STRINGS:
        assert tok.unk_token_id not in tok(text)["input_ids"]


def test_newline_survives_and_offsets_map_to_text(smoke_zoo):
    tok = AutoTokenizer.from_pretrained(smoke_zoo[0] / "llama")
    text = f"{VICUNA_SYSTEM} USER: \nWhat color is the object at the top left? ASSISTANT: red</s>"
    encoded = tok(text, return_offsets_mapping=True)
    tokens = tok.convert_ids_to_tokens(encoded["input_ids"])
    assert any(tok.convert_tokens_to_string([t]) == "\n" for t in tokens)
    pieces = [text[a:b] for a, b in encoded["offset_mapping"]]
    assert "".join(pieces) == text  # offsets tile the text exactly (BOS has an empty span)
    assert encoded["input_ids"][0] == tok.bos_token_id and encoded["input_ids"][-1] == tok.eos_token_id


def test_lm_tokenizer_adds_bos_and_clip_tokenizer_adds_bos_and_eos(smoke_zoo):
    zoo, _ = smoke_zoo
    lm, clip = AutoTokenizer.from_pretrained(zoo / "llama"), AutoTokenizer.from_pretrained(zoo / "clip")
    caption = "A red circle at the top left."
    lm_ids, clip_ids = lm(caption)["input_ids"], clip(caption)["input_ids"]
    assert lm_ids[0] == lm.bos_token_id and lm_ids[-1] != lm.eos_token_id
    assert clip_ids == lm_ids + [clip.eos_token_id]


def test_clip_folder_loads_with_auto_classes_and_pools_at_eos(smoke_zoo):
    zoo, _ = smoke_zoo
    model = AutoModel.from_pretrained(zoo / "clip").eval()
    assert isinstance(model, CLIPModel)
    tok = AutoTokenizer.from_pretrained(zoo / "clip")
    text_config = model.config.text_config
    assert text_config.eos_token_id == tok.eos_token_id != 2  # 2 would trigger CLIP's legacy argmax pooling
    assert text_config.pad_token_id == tok.pad_token_id and text_config.vocab_size == len(tok)
    short, long = "A red circle.", "A blue cross at the top left, a red square in the center and a green circle."
    with torch.no_grad():
        alone = model.get_text_features(**tok([short], return_tensors="pt")).pooler_output
        batch = model.get_text_features(**tok([short, long], padding=True, return_tensors="pt")).pooler_output
    assert torch.allclose(alone[0], batch[0], atol=1e-5)  # padding does not move the pooled position
    assert not torch.allclose(batch[0], batch[1], atol=1e-3)  # pooling is not at the shared BOS


def test_vision_tower_and_image_processor(smoke_zoo):
    zoo, _ = smoke_zoo
    full = CLIPModel.from_pretrained(zoo / "clip").eval()
    vision = CLIPVisionModel.from_pretrained(zoo / "clip").eval()
    assert vision.config.image_size == 36 and vision.config.patch_size == 6
    processor = AutoImageProcessor.from_pretrained(zoo / "clip")
    _, image = scene_and_image(0, "zoo-test", 0, WorldConfig())
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 36, 36)
    expected = to_pixels(image_to_array(image)[None], processor.image_mean, processor.image_std)
    assert torch.allclose(pixels, expected, atol=1e-5)
    with torch.no_grad():
        hidden = vision(pixel_values=pixels, output_hidden_states=True)
        reference = full.vision_model(pixel_values=pixels)
    assert hidden.last_hidden_state.shape == (1, 37, vision.config.hidden_size)  # CLS + 6x6 patches
    assert torch.allclose(hidden.pooler_output, reference.pooler_output, atol=1e-6)


def test_llama_folder_loads_and_generates(smoke_zoo):
    zoo, _ = smoke_zoo
    model = AutoModelForCausalLM.from_pretrained(zoo / "llama").eval()
    assert isinstance(model, LlamaForCausalLM)
    tok = AutoTokenizer.from_pretrained(zoo / "llama")
    assert (model.config.bos_token_id, model.config.eos_token_id) == (tok.bos_token_id, tok.eos_token_id)
    assert model.config.vocab_size == len(tok)
    prompt = tok(f"{VICUNA_SYSTEM} USER: \nDescribe the image in detail. ASSISTANT:", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 4
    assert np.isfinite(tok.decode(out[0]).__len__())


def test_zoo_record_and_cache_reuse(smoke_zoo):
    zoo, first = smoke_zoo
    record = json.loads((zoo / "zoo.json").read_text())
    assert record["size"] == "smoke" and set(record["parts"]) == {"tokenizer", "clip", "llama"}
    clip_metrics = record["parts"]["clip"]["metrics"]
    assert 0.0 <= clip_metrics["retrieval_accuracy_100way"] <= 1.0
    assert -1.0 <= clip_metrics["spearman_cosine_vs_true_alignment"] <= 1.0
    assert record["parts"]["llama"]["metrics"]["heldout_loss"] > 0
    assert record["quality"]["llama_heldout_loss"] == record["parts"]["llama"]["metrics"]["heldout_loss"]
    assert record["parallel"] is False and record["threads"] == 1
    again = build_zoo(zoo, seed=0, size="smoke", progress=False)
    assert all(part["reused"] for part in again["parts"].values())
    assert again["parts"]["clip"]["metrics"] == first["parts"]["clip"]["metrics"]


def test_changed_llama_settings_rebuild_only_llama(smoke_zoo, tmp_path):
    zoo, _ = smoke_zoo
    smoke = SIZES["smoke"]
    settings = replace(smoke, llama=replace(smoke.llama, steps=2))
    # Work on a copy so the shared fixture stays intact.
    copy = tmp_path / "zoo"
    shutil.copytree(zoo, copy)
    record = build_zoo(copy, seed=0, size=settings, progress=False)
    assert record["parts"]["tokenizer"]["reused"] and record["parts"]["clip"]["reused"]
    assert not record["parts"]["llama"]["reused"]


def test_parallel_build_trains_clip_in_a_worker_process(smoke_zoo, tmp_path):
    zoo, first = smoke_zoo
    shutil.copytree(zoo / "tokenizer", tmp_path / "tokenizer")
    record = build_zoo(tmp_path, seed=0, size="smoke", threads=2, progress=False)
    assert record["parallel"] is True and record["parts"]["tokenizer"]["reused"]
    assert not record["parts"]["clip"]["reused"] and not record["parts"]["llama"]["reused"]
    assert isinstance(CLIPModel.from_pretrained(tmp_path / "clip"), CLIPModel)
    assert isinstance(AutoModelForCausalLM.from_pretrained(tmp_path / "llama"), LlamaForCausalLM)


def test_failed_build_leaves_nothing_that_looks_finished(tmp_path):
    def explode(folder):
        (folder / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        build_part(tmp_path / "clip", "k", {}, explode)
    assert list(tmp_path.iterdir()) == []
    info = build_part(tmp_path / "clip", "k", {}, lambda folder: {"metrics": {"x": 1}})
    assert not info["reused"] and (tmp_path / "clip" / "part.json").is_file()
    assert build_part(tmp_path / "clip", "k", {}, explode)["reused"]


def test_unknown_size_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown zoo size"):
        build_zoo(tmp_path, size="huge")


def test_spearman_with_ties():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 2], [1, 1, 2, 2]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [5, 5, 5]) != spearman([1, 2, 3], [5, 5, 5])  # NaN for a constant side
