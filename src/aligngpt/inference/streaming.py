"""Batched generation that streams every row's text as it is produced.

Several requests (each with its own prompt, image, token budget and stop strings) share one ``generate`` call. A
stopping criterion sees every new token: it decodes each row incrementally, hands visible text to that row's
:class:`StreamSink`, and ends a row on EOS, a stop string, its own token budget or cancellation. The gate's
weights from the prefill forward reach each sink before its first piece of text.

Rows in one call must share the sampling settings (see :func:`sampling_key`); token budgets and stop strings may
differ.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from PIL import Image
from transformers import StoppingCriteria, StoppingCriteriaList

from aligngpt.inference.pipeline import AlignGPTPipeline, GenerationSettings, _capture_alignment_weights
from aligngpt.processing.stops import end_token_ids, first_stop, stop_prefix_length

REPLACEMENT_CHAR = "\ufffd"  # an incomplete UTF-8 sequence decodes to this; wait for the next token

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_CANCELLED = "cancelled"


@dataclass
class Alignment:
    """The gate's decision for one prompt.

    ``weights``: α, the softmax over the N-1 local levels; ``level_coefficients``: the weight of each of the N level
    rows in the alignment embedding (the last row is the global level).
    """

    weights: list[float]
    level_coefficients: list[float] | None
    mode: str

    def as_dict(self) -> dict:
        return {"weights": self.weights, "level_coefficients": self.level_coefficients, "mode": self.mode}


class StreamSink(Protocol):
    """Receives one row's events, in order: ``start``, any number of ``text``, then ``finish``."""

    def start(self, alignment: Alignment | None, prompt_tokens: int) -> None: ...

    def text(self, piece: str) -> None: ...

    def finish(self, reason: str, completion_tokens: int) -> None: ...


@dataclass
class StreamRequest:
    """One row of a batched generation.

    ``prompt`` is the full templated prompt (with ``<image>`` exactly when ``image`` is given).
    ``cancelled`` is set from another thread to end the row early.
    """

    prompt: str
    image: Image.Image | None
    settings: GenerationSettings
    sink: StreamSink
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class StreamResult:
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    alignment: Alignment | None


class CollectingSink:
    """A sink that keeps everything (for callers that only want the final result)."""

    def __init__(self) -> None:
        self.alignment: Alignment | None = None
        self.prompt_tokens = 0
        self.pieces: list[str] = []
        self.finish_reason: str | None = None
        self.completion_tokens = 0

    def start(self, alignment: Alignment | None, prompt_tokens: int) -> None:
        self.alignment, self.prompt_tokens = alignment, prompt_tokens

    def text(self, piece: str) -> None:
        self.pieces.append(piece)

    def finish(self, reason: str, completion_tokens: int) -> None:
        self.finish_reason, self.completion_tokens = reason, completion_tokens


def sampling_key(settings: GenerationSettings) -> tuple:
    """Requests with equal keys can share one ``generate`` call."""
    if settings.temperature <= 0:
        return ("greedy",)
    return ("sample", float(settings.temperature), 1.0 if settings.top_p is None else float(settings.top_p))


class RowDecoder:
    """Incremental detokenisation of one row with stop strings.

    ``push(token)`` returns the newly visible text. Text that might be the start of a stop string, or an incomplete
    UTF-8 character, is held back until it is resolved. Leading whitespace is dropped and nothing after a stop
    string is ever emitted, so :attr:`text` is safe to put back into a conversation history.
    """

    def __init__(self, tokenizer, stops: Sequence[str], end_ids: set[int], max_new_tokens: int):
        self.tokenizer = tokenizer
        self.stops = [stop for stop in stops if stop]
        self.end_ids = end_ids
        self.max_new_tokens = max_new_tokens
        self.token_ids: list[int] = []
        self.emitted = ""
        self.finish_reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        return self.emitted.strip()

    def push(self, token: int) -> str:
        if self.finished:
            return ""
        if token in self.end_ids:
            return self._finish(FINISH_STOP, self._decoded(), hold=0)
        self.token_ids.append(token)
        full = self._decoded()
        cut = first_stop(full, self.stops)
        if cut >= 0:
            return self._finish(FINISH_STOP, full[:cut], hold=0)
        if len(self.token_ids) >= self.max_new_tokens:
            return self._finish(FINISH_LENGTH, full, hold=0)
        return self._emit(full, self._hold_back(full))

    def cancel(self) -> None:
        if not self.finished:
            self.finish_reason = FINISH_CANCELLED

    def _decoded(self) -> str:
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return text.lstrip()

    def _hold_back(self, full: str) -> int:
        """Characters at the end of ``full`` that may still turn into a stop string or a complete character."""
        if full.endswith(REPLACEMENT_CHAR):
            return len(full) - len(full.rstrip(REPLACEMENT_CHAR))
        return stop_prefix_length(full, self.stops)

    def _emit(self, full: str, hold: int) -> str:
        visible = full[: len(full) - hold] if hold else full
        # Normally ``visible`` extends what was sent. If the tokenizer ever rewrites earlier text, what was sent stays
        # the truth and only the new tail is appended, so ``text`` always equals what the sink received.
        piece = visible[len(self.emitted) :]
        self.emitted += piece
        return piece

    def _finish(self, reason: str, full: str, hold: int) -> str:
        piece = self._emit(full.rstrip(REPLACEMENT_CHAR), hold)
        self.finish_reason = reason
        return piece


class _RowStreamer(StoppingCriteria):
    """Feeds each step's tokens to the rows' decoders and sinks; returns which rows are done ``[B]``."""

    def __init__(self, requests: Sequence[StreamRequest], decoders: list[RowDecoder], on_first_step):
        self.requests = requests
        self.decoders = decoders
        self.on_first_step = on_first_step
        self.started = False

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        if not self.started:
            self.started = True
            self.on_first_step()
        newest = input_ids[:, -1].tolist()
        done = []
        for request, decoder, token in zip(self.requests, self.decoders, newest):
            if not decoder.finished:
                if request.cancelled.is_set():
                    decoder.cancel()
                else:
                    piece = decoder.push(token)
                    if piece:
                        request.sink.text(piece)
                if decoder.finished:
                    request.sink.finish(decoder.finish_reason, len(decoder.token_ids))
            done.append(decoder.finished)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _alignment_for_row(pipeline: AlignGPTPipeline, weights: torch.Tensor | None, row: int, has_image: bool):
    if weights is None or not has_image:
        return None
    alpha = weights[row].tolist()
    return Alignment(alpha, pipeline.level_coefficients(alpha), pipeline.model.config.alignment_mode)


@torch.inference_mode()
def generate_streams(pipeline: AlignGPTPipeline, requests: Sequence[StreamRequest]) -> list[StreamResult]:
    """Run ``requests`` as one left-padded batch; every sink gets its row's events while decoding runs.

    All requests must have the same :func:`sampling_key`. Each row stops at EOS, at one of the template's or its
    own stop strings, after its own ``max_new_tokens``, or when its ``cancelled`` event is set.
    """
    if not requests:
        return []
    keys = {sampling_key(request.settings) for request in requests}
    if len(keys) > 1:
        raise ValueError(f"requests in one batch must share sampling settings, got {sorted(keys)}")
    tokenizer = pipeline.processor.tokenizer
    end_ids = end_token_ids(tokenizer)
    decoders = [
        RowDecoder(
            tokenizer,
            [*pipeline.template.stop_strings, *request.settings.stop],
            end_ids,
            request.settings.max_new_tokens,
        )
        for request in requests
    ]
    batch = pipeline.encode([r.prompt for r in requests], [r.image for r in requests])
    prompt_tokens = batch["attention_mask"].sum(dim=1).tolist()
    longest = max(request.settings.max_new_tokens for request in requests)
    settings = GenerationSettings(
        max_new_tokens=longest, temperature=requests[0].settings.temperature, top_p=requests[0].settings.top_p
    )
    alignments: list[Alignment | None] = [None] * len(requests)

    with _capture_alignment_weights(pipeline.model) as captured:

        def announce() -> None:
            weights = captured.get("weights")
            for row, request in enumerate(requests):
                alignments[row] = _alignment_for_row(pipeline, weights, row, request.image is not None)
                request.sink.start(alignments[row], int(prompt_tokens[row]))

        streamer = _RowStreamer(requests, decoders, announce)
        pipeline.model.generate(
            **batch,
            **settings.generate_kwargs(),
            pad_token_id=tokenizer.pad_token_id,
            stopping_criteria=StoppingCriteriaList([streamer]),
        )
    results = []
    for row, (request, decoder) in enumerate(zip(requests, decoders)):
        if not decoder.finished:  # generate ended by its own criteria (e.g. the model's max length)
            decoder.finish_reason = FINISH_LENGTH
            request.sink.finish(FINISH_LENGTH, len(decoder.token_ids))
        results.append(
            StreamResult(
                decoder.text, decoder.token_ids, decoder.finish_reason, int(prompt_tokens[row]), alignments[row]
            )
        )
    return results
