"""Behaviour of AlignGPTForConditionalGeneration beyond official parity: padding, caching, batching, backbones."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from aligngpt.modeling import AlignGPTForConditionalGeneration
from aligngpt.processing import AlignGPTProcessor
from tests.helpers import decoder_inputs_embeds, tiny_model_dir

CONVERSATIONS = [
    [{"from": "human", "value": "<image>\nWhat is in the picture?"}, {"from": "gpt", "value": "A red car."}],
    [
        {"from": "human", "value": "Tell me a fact about cats."},
        {"from": "gpt", "value": "Cats sleep a lot, often."},
    ],
    [
        {"from": "human", "value": "Look at <image> and tell me the colors of this scene."},
        {"from": "gpt", "value": "Green and brown."},
        {"from": "human", "value": "Anything else?"},
        {"from": "gpt", "value": "A blue boat."},
    ],
]


def _images():
    return [Image.new("RGB", (20, 30), (200, 30, 30)), None, Image.new("RGB", (40, 24), (20, 180, 90))]


@pytest.fixture(scope="module")
def llama_clip(tmp_path_factory):
    path = tiny_model_dir(tmp_path_factory.mktemp("llama"), "clip", "llama")
    model = AlignGPTForConditionalGeneration.from_pretrained(path).eval()
    # A sharper gate than the default init, so the gate weights depend visibly on the input.
    with torch.no_grad():
        model.alignment.gate[0].weight.mul_(50)
    return model, AlignGPTProcessor.from_pretrained(path), path


def _samples(processor):
    return [processor.encode_conversation(c, i) for c, i in zip(CONVERSATIONS, _images())]


def _forward(model, batch):
    with torch.no_grad():
        return model(**batch)


def _valid_logits(output, batch, row):
    mask = batch["attention_mask"][row].bool()
    return output.logits[row][mask]


def test_left_padding_equals_right_padding_equals_single_sample(llama_clip):
    model, processor, _ = llama_clip
    samples = _samples(processor)
    right = processor.collate(samples, "right")
    left = processor.collate(samples, "left")
    out_right, out_left = _forward(model, right), _forward(model, left)
    assert out_right.loss.item() == pytest.approx(out_left.loss.item(), abs=1e-5)
    torch.testing.assert_close(out_right.alignment_weights, out_left.alignment_weights, atol=1e-6, rtol=1e-5)
    for row, sample in enumerate(samples):
        single = processor.collate([sample])
        out_single = _forward(model, single)
        expected = out_single.logits[0]
        torch.testing.assert_close(_valid_logits(out_right, right, row), expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(_valid_logits(out_left, left, row), expected, atol=1e-4, rtol=1e-4)
        if sample.has_image:
            torch.testing.assert_close(
                out_right.alignment_weights[row], out_single.alignment_weights[0], atol=1e-6, rtol=0
            )
    assert torch.all(out_right.alignment_weights[1] == 0)  # text-only row
    torch.testing.assert_close(out_right.alignment_weights.sum(-1)[[0, 2]], torch.ones(2))


def test_alignment_slot_follows_bos_and_text_rows_have_none(llama_clip):
    model, processor, _ = llama_clip
    batch = processor.collate(_samples(processor), "left")
    ids = batch["input_ids"]
    for row in (0, 2):
        first = int(batch["attention_mask"][row].argmax())
        assert ids[row, first] == processor.tokenizer.bos_token_id
        assert ids[row, first + 1] == model.config.alignment_token_id
        assert int((ids[row] == model.config.image_token_id).sum()) == model.config.num_image_tokens
    assert not (ids[1] == model.config.alignment_token_id).any()
    assert torch.all(batch["labels"][ids == model.config.alignment_token_id] == -100)


def test_text_only_rows_give_plain_language_model_logits(llama_clip):
    model, processor, _ = llama_clip
    sample = processor.encode_conversation(CONVERSATIONS[1])
    batch = processor.collate([sample])
    ours = _forward(model, batch).logits
    with torch.no_grad():
        plain = model.lm_head(model.language_model(input_ids=batch["input_ids"]).last_hidden_state)
    vocab = model.config.image_token_id  # the LLM's own vocabulary ends where the marker tokens begin
    torch.testing.assert_close(ours[..., :vocab], plain[..., :vocab])


def test_supervised_only_lm_head_gives_the_same_loss_and_gradients(llama_clip):
    model, processor, _ = llama_clip
    batch = processor.collate(_samples(processor))
    model.zero_grad()
    full = model(**batch)
    full.loss.backward()
    grads_full = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    sparse = model(**batch, loss_positions="supervised")
    sparse.loss.backward()
    assert sparse.loss.item() == pytest.approx(full.loss.item(), abs=1e-6)
    n_supervised = int((batch["labels"][:, 1:] != -100).sum())
    assert sparse.logits.shape == (n_supervised, model.config.text_config.vocab_size)
    for name, grad in grads_full.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, atol=1e-6, rtol=1e-4)
    model.zero_grad()


def test_gate_gradients_reach_embeddings_and_projector(llama_clip):
    """The gate's inputs are not detached (as in the official code)."""
    model, processor, _ = llama_clip
    batch = processor.collate([_samples(processor)[0]])
    model.zero_grad()
    output = model(**batch)
    output.alignment_weights[0, 0].backward()
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0
    assert model.projector[0].weight.grad.abs().sum() > 0
    assert model.alignment.gate[0].weight.grad.abs().sum() > 0
    model.zero_grad()


@pytest.mark.parametrize("gate_text", ["all", "prompt"])
def test_gate_text_prompt_leaves_the_answer_out_of_the_gate_in_training(llama_clip, gate_text):
    """``gate_text="prompt"``: the gate's weights in a training forward do not depend on the answer tokens (as at
    inference); ``"all"`` (official) averages the answer in. ``shift_labels`` mark the same answer positions."""
    model, processor, _ = llama_clip
    batch = processor.collate([_samples(processor)[0]])
    answer = batch["labels"] != -100
    assert answer.any()
    other = dict(batch, input_ids=batch["input_ids"].masked_fill(answer, 5))
    other["labels"] = other["input_ids"].masked_fill(~answer, -100)
    model.config.gate_text = gate_text
    try:
        weights, weights_other = _forward(model, batch).alignment_weights, _forward(model, other).alignment_weights
        shifted = {key: value for key, value in batch.items() if key != "labels"}
        shifted["shift_labels"] = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=-100)
        weights_shifted = _forward(model, shifted).alignment_weights
    finally:
        model.config.gate_text = "all"
    if gate_text == "prompt":
        torch.testing.assert_close(weights, weights_other, atol=1e-7, rtol=0)
        torch.testing.assert_close(weights_shifted, weights, atol=1e-7, rtol=0)
    else:
        assert (weights - weights_other).abs().max() > 1e-4


def test_kv_cache_decoding_equals_full_recomputation(llama_clip):
    """A cached decode step equals a full pass over the same embeddings (the gate saw the prompt only, as at
    official inference; recomputing from ids would let the gate also see the generated token)."""
    model, processor, _ = llama_clip
    batch = processor.collate(_samples(processor), "left")
    del batch["labels"]
    with torch.no_grad():
        prefill = model(**batch, use_cache=True)
        next_ids = prefill.logits[:, -1].argmax(-1, keepdim=True)
        mask = torch.cat([batch["attention_mask"], torch.ones_like(next_ids)], dim=1)
        step = model(input_ids=next_ids, attention_mask=mask, cache=prefill.cache, use_cache=True)
        prompt_embeds, _ = model.embed_inputs(
            batch["input_ids"], batch["attention_mask"], batch["pixel_values"], None, None
        )
        embeds = torch.cat([prompt_embeds, model.get_input_embeddings()(next_ids)], dim=1)
        full = model(inputs_embeds=embeds, attention_mask=mask)
    torch.testing.assert_close(step.logits[:, -1], full.logits[:, -1], atol=1e-5, rtol=1e-5)


def test_batched_greedy_generation_equals_per_sample(llama_clip):
    model, processor, _ = llama_clip
    prompts = [
        processor.generation_prompt("<image>\nWhat is in the picture?"),
        processor.generation_prompt("Tell me a fact about cats, please, in detail."),
        processor.generation_prompt("<image>\nDescribe it."),
    ]
    images = [Image.new("RGB", (20, 30), (200, 30, 30)), None, Image.new("RGB", (30, 30), (0, 0, 200))]
    settings = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": processor.tokenizer.pad_token_id}
    batch = processor(prompts, images)
    batched = model.generate(**batch, **settings)[:, batch["input_ids"].shape[1] :]
    for row, (prompt, image) in enumerate(zip(prompts, images)):
        single = processor([prompt], [image])
        alone = model.generate(**single, **settings)[0, single["input_ids"].shape[1] :].tolist()
        # A row that ends early is padded after its EOS in the batch.
        assert batched[row].tolist() == alone + [settings["pad_token_id"]] * (batched.shape[1] - len(alone))


def test_save_and_load_round_trip_is_exact(llama_clip, tmp_path):
    model, processor, _ = llama_clip
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    reloaded = AlignGPTForConditionalGeneration.from_pretrained(tmp_path)
    original = model.state_dict()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    batch = processor.collate(_samples(processor))
    torch.testing.assert_close(_forward(reloaded, batch).logits, _forward(model, batch).logits, atol=0, rtol=0)
    assert AlignGPTProcessor.from_pretrained(tmp_path).settings() == processor.settings()


def test_cached_vision_features_equal_the_pixel_path(llama_clip):
    model, processor, _ = llama_clip
    batch = processor.collate(_samples(processor))
    pixels = batch.pop("pixel_values")
    with torch.no_grad():
        from_pixels = model(**batch, pixel_values=pixels)
        cached = model(**batch, vision_features=model.get_vision_features(pixels))
    torch.testing.assert_close(cached.logits, from_pixels.logits, atol=0, rtol=0)


def test_alignment_modes_follow_their_formulas(llama_clip):
    model, processor, _ = llama_clip
    batch = processor.collate([_samples(processor)[0]])
    table = model.alignment.level_embeddings.detach()
    slot = int((batch["input_ids"][0] == model.config.alignment_token_id).nonzero())

    def inserted(mode=None, **kwargs):
        previous = model.config.alignment_mode
        model.config.alignment_mode = mode or previous
        try:
            with torch.no_grad(), decoder_inputs_embeds(model) as captured:
                output = model(**batch, **kwargs)
        finally:
            model.config.alignment_mode = previous
        return captured["inputs_embeds"][0, slot], output.alignment_weights

    adaptive, alpha = inserted()
    torch.testing.assert_close(adaptive, alpha[0] @ table[:-1] + table[-1])
    torch.testing.assert_close(inserted("local")[0], alpha[0] @ table[:-1])
    torch.testing.assert_close(inserted("global")[0], table[-1])
    torch.testing.assert_close(inserted("uniform")[0], table[:-1].mean(0) + table[-1])
    torch.testing.assert_close(inserted("fixed:3")[0], table[3])
    stage1, weights = inserted(alignment_levels=torch.tensor([5]))
    torch.testing.assert_close(stage1, table[5])
    assert weights is None


@pytest.mark.parametrize(("vision", "llm", "tokens", "slot"), [("siglip", "llama", 729, 1), ("clip", "qwen2", 16, 0)])
def test_other_backbones(tmp_path, vision, llm, tokens, slot):
    """SigLIP: no CLS, 27x27 = 729 image tokens (the gate is that wide). Qwen2: no BOS, so the slot is position 0."""
    path = tiny_model_dir(tmp_path, vision, llm)
    model = AlignGPTForConditionalGeneration.from_pretrained(path).eval()
    processor = AlignGPTProcessor.from_pretrained(path)
    assert model.config.num_image_tokens == tokens
    assert model.alignment.gate[0].in_features == tokens
    conversation = [
        {"from": "human", "value": "<image>\nwhat is in the picture ?"},
        {"from": "gpt", "value": "a red car ."},
    ]
    sample = processor.encode_conversation(conversation, Image.new("RGB", (30, 20), (255, 0, 0)))
    assert sample.input_ids[slot] == model.config.alignment_token_id
    output = _forward(model, processor.collate([sample]))
    assert torch.isfinite(output.loss)
    torch.testing.assert_close(output.alignment_weights.sum(), torch.tensor(1.0))
    generated = model.generate(
        **processor([processor.generation_prompt("<image>\nwhat is it ?")], [Image.new("RGB", (8, 8))]),
        max_new_tokens=3,
        do_sample=False,
    )
    assert generated.shape[1] >= 3


def test_plain_llava_mode_has_no_alignment_token(tmp_path):
    path = tiny_model_dir(tmp_path, alignment_mode="none")
    model = AlignGPTForConditionalGeneration.from_pretrained(path)
    processor = AlignGPTProcessor.from_pretrained(path)
    assert model.alignment is None
    sample = processor.encode_conversation(CONVERSATIONS[0], _images()[0])
    assert model.config.alignment_token_id not in sample.input_ids
    output = _forward(model, processor.collate([sample]))
    assert output.alignment_weights is None and torch.isfinite(output.loss)


def test_mismatched_images_and_bad_config_raise_clear_errors(llama_clip):
    model, processor, _ = llama_clip
    batch = processor.collate(_samples(processor))
    # Markers without image inputs are embedded as tokens (as transformers' llava does), with a warning.
    from transformers.testing_utils import CaptureLogger

    from aligngpt.modeling import aligngpt as modeling_module

    modeling_module.logger.warning_once.cache_clear()
    with torch.no_grad(), CaptureLogger(modeling_module.logger) as captured:
        unimaged = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert "neither pixel_values nor vision_features" in captured.out
    with torch.no_grad():
        embeds = model.get_input_embeddings()(batch["input_ids"])
        as_tokens = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(unimaged, as_tokens, atol=0, rtol=0)
    with pytest.raises(ValueError, match="do not fill"):
        model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"][:1],
        )
    with pytest.raises(ValueError, match="one <image>"):
        processor.encode_conversation(
            [{"from": "human", "value": "<image> and <image>"}, {"from": "gpt", "value": "x"}]
        )
    with pytest.raises(ValueError, match="Unknown chat template"):
        processor.encode_conversation(CONVERSATIONS[1], template="vicuna_v2")
    from aligngpt.config import AlignGPTConfig

    for bad in (
        {"alignment_mode": "adaptve"},
        {"projector_type": "mlp2x_relu"},
        {"alignment_mode": "fixed:9"},
        {"gate_text": "answer"},
    ):
        with pytest.raises(ValueError):
            AlignGPTConfig(**bad)
