"""Batched streaming generation: same tokens as ``generate_batch``, per-row budgets, stops, cancellation."""

from __future__ import annotations

import pytest

from aligngpt.inference import GenerationSettings
from aligngpt.inference.streaming import (
    FINISH_CANCELLED,
    FINISH_LENGTH,
    FINISH_STOP,
    CollectingSink,
    RowDecoder,
    StreamRequest,
    generate_streams,
    sampling_key,
)

TOKENS = 6


def _request(pipeline, message, image, **settings):
    prompt = pipeline.build_prompt(message, image is not None)
    return StreamRequest(prompt, image, GenerationSettings(**{"max_new_tokens": TOKENS, **settings}), CollectingSink())


def test_streams_match_generate_batch_and_carry_gate_weights(pipeline, red_image):
    requests = [_request(pipeline, "what is this?", red_image), _request(pipeline, "hello there", None)]
    reference = pipeline.generate_batch(
        [(red_image, "what is this?"), (None, "hello there")], GenerationSettings(max_new_tokens=TOKENS)
    )
    results = generate_streams(pipeline, requests)
    for request, result, answer in zip(requests, results, reference):
        assert result.token_ids == answer.token_ids[: len(result.token_ids)]
        assert "".join(request.sink.pieces).strip() == result.text
        assert request.sink.completion_tokens == len(result.token_ids)
    assert results[0].alignment.weights == pytest.approx(reference[0].alignment_weights)
    assert sum(results[0].alignment.weights) == pytest.approx(1.0, abs=1e-5)
    assert results[0].alignment.level_coefficients[-1] == 1.0  # the global level always counts fully
    assert results[1].alignment is None  # text-only rows have no gate
    assert results[0].prompt_tokens > results[1].prompt_tokens  # the image occupies positions


def test_rows_keep_their_own_budget_and_stop_strings(pipeline, red_image):
    free = generate_streams(pipeline, [_request(pipeline, "what is this?", red_image, max_new_tokens=10)])[0]
    words = free.text.split()
    assert len(words) >= 2, "the tiny model should produce at least two words in 10 tokens"
    stop = words[1]
    rows = [
        _request(pipeline, "what is this?", red_image, max_new_tokens=10, stop=(stop,)),
        _request(pipeline, "what is this?", red_image, max_new_tokens=3),
    ]
    stopped, short = generate_streams(pipeline, rows)
    assert stopped.finish_reason == FINISH_STOP
    assert stop not in stopped.text
    assert free.text.startswith(stopped.text)
    assert short.finish_reason == FINISH_LENGTH and len(short.token_ids) == 3
    assert short.token_ids == free.token_ids[:3]


def test_cancelled_row_stops_without_disturbing_others(pipeline, red_image):
    cancelled = _request(pipeline, "what is this?", red_image)
    cancelled.cancelled.set()
    other = _request(pipeline, "hello there", None)
    results = generate_streams(pipeline, [cancelled, other])
    assert results[0].finish_reason == FINISH_CANCELLED and results[0].token_ids == []
    assert cancelled.sink.pieces == []
    assert len(results[1].token_ids) == TOKENS


def test_mixed_sampling_settings_are_refused(pipeline):
    rows = [_request(pipeline, "a", None), _request(pipeline, "b", None, temperature=0.7)]
    with pytest.raises(ValueError, match="sampling"):
        generate_streams(pipeline, rows)
    assert sampling_key(GenerationSettings(temperature=0, top_p=0.3)) == sampling_key(GenerationSettings())


class _CharTokenizer:
    """One character per token; id 0 ends the answer."""

    def decode(self, ids, skip_special_tokens=True, clean_up_tokenization_spaces=False):
        return "".join(chr(i) for i in ids)


def _push_all(decoder: RowDecoder, text: str) -> list[str]:
    return [decoder.push(ord(ch)) for ch in text]


def test_row_decoder_holds_back_possible_stop_prefixes():
    decoder = RowDecoder(_CharTokenizer(), ["###"], {0}, max_new_tokens=100)
    pieces = _push_all(decoder, " ab#c#")
    assert "".join(pieces) == "ab#c"  # leading space dropped, the trailing "#" waits
    assert pieces[3] == ""  # "ab#" might still become "###"
    assert decoder.push(ord("#")) == "" and decoder.push(ord("#")) == ""
    assert decoder.finish_reason == FINISH_STOP and decoder.text == "ab#c"


def test_row_decoder_waits_for_complete_characters_and_ends_on_eos():
    class Bytes(_CharTokenizer):
        def decode(self, ids, **kwargs):
            return bytes(ids).decode("utf-8", errors="replace")

    decoder = RowDecoder(Bytes(), [], {0}, max_new_tokens=100)
    encoded = "é!".encode()
    assert decoder.push(encoded[0]) == ""  # half a character
    assert decoder.push(encoded[1]) == "é"
    assert decoder.push(encoded[2]) == "!"
    assert decoder.push(0) == "" and decoder.finish_reason == FINISH_STOP
    assert decoder.push(ord("x")) == ""  # nothing after the end
    assert decoder.text == "é!"
