"""The model follows transformers' generic contracts: tuple outputs, ``inputs_embeds``, ``get_image_features``."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers.modeling_outputs import BaseModelOutputWithPooling

from aligngpt.modeling import AlignGPTForConditionalGeneration
from aligngpt.processing import AlignGPTProcessor
from tests.helpers import tiny_model_dir

CONVERSATIONS = [
    [{"from": "human", "value": "<image>\nWhat is in the picture?"}, {"from": "gpt", "value": "A red car."}],
    [{"from": "human", "value": "Tell me a fact about cats."}, {"from": "gpt", "value": "Cats sleep a lot."}],
]
IMAGES = [Image.new("RGB", (20, 30), (200, 30, 30)), None]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tiny_model_dir(tmp_path_factory.mktemp("contract"))
    model = AlignGPTForConditionalGeneration.from_pretrained(path).eval()
    processor = AlignGPTProcessor.from_pretrained(path)
    batch = processor.collate([processor.encode_conversation(c, i) for c, i in zip(CONVERSATIONS, IMAGES)])
    return model, batch, path


def test_return_dict_false_gives_the_output_fields_as_a_tuple(tiny):
    model, batch, _ = tiny
    with torch.no_grad():
        as_dict = model(**batch)
        as_tuple = model(**batch, return_dict=False)
    assert isinstance(as_tuple, tuple)
    assert len(as_tuple) == len(as_dict.to_tuple())
    loss, logits = as_tuple[:2]
    assert torch.equal(loss, as_dict.loss) and torch.equal(logits, as_dict.logits)
    assert torch.equal(as_tuple[-2], as_dict.alignment_weights)
    assert torch.equal(as_tuple[-1].pooler_output, as_dict.image_outputs.pooler_output)  # the image encoder's output

    model.config.return_dict = False
    try:
        with torch.no_grad():
            from_config = model(**batch)
            asked = model(**batch, return_dict=True)
    finally:
        model.config.return_dict = True
    assert isinstance(from_config, tuple) and torch.equal(from_config[1], as_dict.logits)
    assert torch.equal(asked.logits, as_dict.logits)


def test_inputs_embeds_of_the_input_ids_with_image_inputs_equal_the_input_ids_path(tiny):
    model, batch, _ = tiny
    inputs = {key: batch[key] for key in ("attention_mask", "pixel_values", "labels")}
    embeds = model.get_input_embeddings()(batch["input_ids"])
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"], **inputs)
        got = model(inputs_embeds=embeds, **inputs)
        features = model.get_vision_features(batch["pixel_values"])
        cached = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], vision_features=features)
    torch.testing.assert_close(got.logits, expected.logits, atol=0, rtol=0)
    torch.testing.assert_close(got.alignment_weights, expected.alignment_weights, atol=0, rtol=0)
    assert got.loss.item() == expected.loss.item()
    torch.testing.assert_close(cached.logits, expected.logits, atol=0, rtol=0)


def test_inputs_embeds_with_image_inputs_is_refused_for_legacy_negative_marker_ids(tiny):
    model, batch, path = tiny
    legacy = AlignGPTForConditionalGeneration.from_pretrained(path, image_token_id=-200, alignment_token_id=-201)
    embeds = legacy.get_input_embeddings()(batch["input_ids"].clamp_min(0))
    for extra in ({"pixel_values": batch["pixel_values"]}, {"alignment_levels": torch.tensor([1, 0])}):
        with pytest.raises(ValueError, match="cannot be used with inputs_embeds.*legacy.*embed_inputs"):
            legacy(inputs_embeds=embeds, attention_mask=batch["attention_mask"], **extra)


def test_inputs_embeds_from_embed_inputs_equal_the_input_ids_path(tiny):
    model, batch, _ = tiny
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        expected = model(**inputs).logits
        embeds, _ = model.embed_inputs(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"])
        got = model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits
        text_ids = batch["input_ids"][1:]  # the text-only row
        text = model(inputs_embeds=model.get_input_embeddings()(text_ids)).logits
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    torch.testing.assert_close(text, model(input_ids=text_ids).logits, atol=0, rtol=0)


def test_get_image_features_returns_the_tower_output_with_the_projected_tokens(tiny):
    model, batch, _ = tiny
    pixels = batch["pixel_values"]
    tower = model.config.vision_config
    with torch.no_grad():
        out = model.get_image_features(pixels)
        expected = model.project_vision_features(model.get_vision_features(pixels))
        with_hidden = model.get_image_features(pixel_values=pixels, output_hidden_states=True)
        as_tuple = model.get_image_features(pixels, return_dict=False)
    assert isinstance(out, BaseModelOutputWithPooling)
    n = pixels.shape[0]
    assert out.pooler_output.shape == (n, model.config.num_image_tokens, model.config.text_config.hidden_size)
    torch.testing.assert_close(out.pooler_output, expected, atol=0, rtol=0)
    assert out.last_hidden_state.shape == (n, model.config.patch_grid_size**2 + 1, tower.hidden_size)
    assert out.hidden_states is None and out.attentions is None
    assert len(with_hidden.hidden_states) == tower.num_hidden_layers + 1
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[1], out.pooler_output)


def test_get_image_features_passes_output_attentions_to_the_tower(tiny):
    _, batch, path = tiny
    eager = AlignGPTForConditionalGeneration.from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        out = eager.get_image_features(batch["pixel_values"], output_attentions=True)
    assert len(out.attentions) == eager.config.vision_config.num_hidden_layers
    seq = eager.config.patch_grid_size**2 + 1
    assert out.attentions[0].shape[-2:] == (seq, seq)


def test_shift_labels_are_the_targets_when_given(tiny):
    model, batch, _ = tiny
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "pixel_values")}
    labels = batch["labels"]
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    with torch.no_grad():
        from_labels = model(**inputs, labels=labels).loss
        for positions in ("all", "supervised"):
            pre_shifted = model(**inputs, shift_labels=shifted, loss_positions=positions).loss
            assert pre_shifted.item() == pytest.approx(from_labels.item(), rel=1e-6)
            # With shift_labels given, labels no longer matter and shift_labels do.
            ignored = model(**inputs, labels=torch.full_like(labels, -100), shift_labels=shifted).loss
            assert ignored.item() == pytest.approx(from_labels.item(), rel=1e-6)
        moved = model(**inputs, shift_labels=torch.roll(shifted, 1, dims=1)).loss
    assert moved.item() != pytest.approx(from_labels.item(), rel=1e-3)
