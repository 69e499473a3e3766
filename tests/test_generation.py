"""``generate`` works with every decoding strategy and logits processor of transformers, because the image and
alignment markers are real token ids that are never generated."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import RepetitionPenaltyLogitsProcessor

from aligngpt.modeling import AlignGPTForConditionalGeneration
from aligngpt.processing import AlignGPTProcessor
from tests.helpers import tiny_model_dir

NEW_TOKENS = 6


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tiny_model_dir(tmp_path_factory.mktemp("generation"))
    model = AlignGPTForConditionalGeneration.from_pretrained(path).eval()
    processor = AlignGPTProcessor.from_pretrained(path)
    prompts = [
        processor.generation_prompt("<image>\nWhat is in the picture? Describe the picture."),
        processor.generation_prompt("Tell me a fact about cats."),
    ]
    images = [Image.new("RGB", (20, 30), (200, 30, 30)), None]
    return model, processor, processor(prompts, images)


def _settings(processor, **extra) -> dict:
    # min_new_tokens keeps EOS out, so every strategy runs all the steps and rows stay comparable.
    return {
        "max_new_tokens": NEW_TOKENS,
        "min_new_tokens": NEW_TOKENS,
        "pad_token_id": processor.tokenizer.pad_token_id,
        **extra,
    }


def _new(sequences: torch.Tensor, batch) -> torch.Tensor:
    return sequences[:, batch["input_ids"].shape[1] :]


def _greedy(model, processor, batch) -> torch.Tensor:
    return _new(model.generate(**batch, **_settings(processor, do_sample=False)), batch)


def _markers(model) -> list[int]:
    return list(model.config.marker_token_ids)


def test_the_markers_are_tokens_of_the_tokenizer_and_suppressed_in_the_generation_config(tiny):
    model, processor, batch = tiny
    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids(["<image>", "<alignment>"]) == _markers(model)
    assert set(_markers(model)) <= set(model.generation_config.suppress_tokens)
    assert model.get_input_embeddings().weight.shape[0] == model.config.text_config.vocab_size == len(tokenizer)
    assert processor.decode(batch["input_ids"][0]).count("<image>") == 0  # special tokens are skipped
    with torch.no_grad():
        logits = model(**batch).logits
    assert bool((logits[..., _markers(model)] == torch.finfo(logits.dtype).min).all())


def test_repetition_penalty_equals_a_step_by_step_reference(tiny):
    model, processor, batch = tiny
    penalty = 1.3
    got = _new(model.generate(**batch, **_settings(processor, do_sample=False, repetition_penalty=penalty)), batch)

    process = RepetitionPenaltyLogitsProcessor(penalty)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            logits = model(input_ids=ids, attention_mask=mask, pixel_values=batch["pixel_values"]).logits[:, -1]
            logits[:, processor.tokenizer.eos_token_id] = float("-inf")  # min_new_tokens
            logits[:, _markers(model)] = float("-inf")  # suppress_tokens
            token = process(ids, logits).argmax(-1, keepdim=True)
            ids, mask = torch.cat([ids, token], 1), torch.cat([mask, torch.ones_like(token)], 1)
    assert got.tolist() == _new(ids, batch).tolist()
    assert got.tolist() != _greedy(model, processor, batch).tolist()  # the penalty changed something


def test_beam_search_returns_ranked_beams_scored_by_the_model(tiny):
    model, processor, batch = tiny
    out = model.generate(
        **batch,
        **_settings(processor, num_beams=3, num_return_sequences=2, length_penalty=0.0, early_stopping=True),
        output_scores=True,
        return_dict_in_generate=True,
    )
    assert out.sequences.shape == (4, batch["input_ids"].shape[1] + NEW_TOKENS)
    scores = out.sequences_scores.view(2, 2)
    assert bool((scores[:, 0] >= scores[:, 1]).all())
    # With length_penalty 0 a beam's score is the sum of its tokens' log-probabilities under the model.
    rows = torch.arange(2).repeat_interleave(2)
    ids = out.sequences
    mask = torch.cat([batch["attention_mask"][rows], torch.ones(4, NEW_TOKENS, dtype=torch.long)], 1)
    pixels = batch["pixel_values"][[0, 0]]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    prompt = batch["input_ids"].shape[1]
    logprobs = torch.log_softmax(logits[:, prompt - 1 : -1].float(), -1)
    total = logprobs.gather(-1, ids[:, prompt:, None]).squeeze(-1).sum(-1)
    torch.testing.assert_close(out.sequences_scores, total, atol=1e-4, rtol=1e-4)


def test_one_beam_and_top_k_one_sampling_equal_greedy(tiny):
    model, processor, batch = tiny
    greedy = _greedy(model, processor, batch)
    one_beam = _new(model.generate(**batch, **_settings(processor, num_beams=1, do_sample=False)), batch)
    top1 = _new(model.generate(**batch, **_settings(processor, do_sample=True, top_k=1)), batch)
    assert one_beam.tolist() == greedy.tolist() == top1.tolist()


def test_sampling_is_reproducible_and_returns_the_asked_number_of_sequences(tiny):
    model, processor, batch = tiny
    settings = _settings(processor, do_sample=True, temperature=5.0, num_return_sequences=3)
    torch.manual_seed(0)
    first = model.generate(**batch, **settings)
    torch.manual_seed(0)
    again = model.generate(**batch, **settings)
    assert first.shape[0] == 6 and torch.equal(first, again)
    assert not set(_new(first, batch).flatten().tolist()) & set(_markers(model))
    assert len({tuple(row) for row in _new(first, batch).tolist()}) > 1  # hot sampling differs between samples


def test_return_dict_in_generate_gives_scores_whose_argmax_is_the_greedy_token(tiny):
    model, processor, batch = tiny
    out = model.generate(
        **batch,
        **_settings(processor, do_sample=False),
        output_scores=True,
        output_logits=True,
        return_dict_in_generate=True,
    )
    assert len(out.scores) == len(out.logits) == NEW_TOKENS
    assert torch.stack(out.scores, 1).argmax(-1).tolist() == _new(out.sequences, batch).tolist()


def test_assisted_decoding_with_the_model_as_its_own_assistant_equals_greedy(tiny):
    model, processor, batch = tiny
    greedy = _greedy(model, processor, batch)
    for row in range(2):  # assisted decoding takes one prompt at a time
        single = {key: value[row : row + 1] for key, value in batch.items() if key != "pixel_values"}
        if row == 0:
            single["pixel_values"] = batch["pixel_values"]
        assisted = model.generate(**single, **_settings(processor, do_sample=False), assistant_model=model)
        assert _new(assisted, single).tolist() == greedy[row : row + 1].tolist()


def test_prompt_lookup_equals_greedy_and_never_copies_a_marker(tiny):
    model, processor, batch = tiny
    greedy = _greedy(model, processor, batch)
    for row in range(2):
        single = {key: value[row : row + 1] for key, value in batch.items() if key != "pixel_values"}
        if row == 0:
            single["pixel_values"] = batch["pixel_values"]
        looked_up = model.generate(**single, **_settings(processor, do_sample=False), prompt_lookup_num_tokens=3)
        new = _new(looked_up, single)
        assert new.tolist() == greedy[row : row + 1].tolist()
        assert not set(new.flatten().tolist()) & set(_markers(model))


def test_generation_from_inputs_embeds_equals_generation_from_input_ids(tiny):
    model, processor, batch = tiny
    greedy = _greedy(model, processor, batch)
    embeds = model.get_input_embeddings()(batch["input_ids"])
    from_embeds = model.generate(
        inputs_embeds=embeds,
        attention_mask=batch["attention_mask"],
        pixel_values=batch["pixel_values"],
        **_settings(processor, do_sample=False),
    )
    assert from_embeds.tolist() == greedy.tolist()  # from embeddings, generate returns only the new tokens


def test_bad_words_ids_ban_a_token_and_may_name_the_markers(tiny):
    model, processor, batch = tiny
    greedy = _greedy(model, processor, batch)
    banned = int(greedy[0, 0])
    bad = [[banned]] + [[marker] for marker in _markers(model)]
    out = _new(model.generate(**batch, **_settings(processor, do_sample=False), bad_words_ids=bad), batch)
    assert banned not in out[0].tolist()


def test_gradient_checkpointing_gives_the_same_gradients(tiny):
    model, processor, _ = tiny
    conversation = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A red car."}]
    batch = processor.collate([processor.encode_conversation(conversation, Image.new("RGB", (20, 30), (9, 9, 9)))])

    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        trained = AlignGPTForConditionalGeneration.from_pretrained(model.name_or_path).train()
        if checkpointing:
            trained.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        trained(**batch).loss.backward()
        return {name: p.grad for name, p in trained.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys() and any("projector" in name for name in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


def test_sdpa_and_eager_attention_agree(tiny):
    model, processor, batch = tiny
    eager = AlignGPTForConditionalGeneration.from_pretrained(model.name_or_path, attn_implementation="eager").eval()
    sdpa = AlignGPTForConditionalGeneration.from_pretrained(model.name_or_path, attn_implementation="sdpa").eval()
    assert eager.get_decoder().config._attn_implementation == "eager"
    assert sdpa.get_decoder().config._attn_implementation == "sdpa"
    with torch.no_grad():
        attended = batch["attention_mask"].bool()  # padding positions attend to nothing: their logits are noise
        torch.testing.assert_close(
            sdpa(**batch).logits[attended], eager(**batch).logits[attended], atol=1e-5, rtol=1e-5
        )
    assert _greedy(sdpa, processor, batch).tolist() == _greedy(eager, processor, batch).tolist()


def test_static_cache_and_full_graph_compiled_decoding_equal_eager(tiny):
    from transformers import CompileConfig

    model, processor, batch = tiny
    greedy = _greedy(model, processor, batch)
    static = _new(
        model.generate(**batch, **_settings(processor, do_sample=False), cache_implementation="static"), batch
    )
    config = CompileConfig(fullgraph=True)  # a graph break in a decoding step fails instead of falling back
    config._compile_all_devices = True  # transformers compiles on accelerators only unless told
    compiled = model.generate(
        **batch, **_settings(processor, do_sample=False), cache_implementation="static", compile_config=config
    )
    assert static.tolist() == greedy.tolist() == _new(compiled, batch).tolist()
