"""Where an answer ends: stop strings and end-of-answer token ids, for batch decoding, streaming and lmms-eval."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def first_stop(text: str, stops: Iterable[str]) -> int:
    """Index of the earliest occurrence in ``text`` of any of ``stops`` (empty strings ignored); ``-1`` if none."""
    found = [text.find(stop) for stop in stops if stop and stop in text]
    return min(found, default=-1)


def cut_at_stops(text: str, stops: Iterable[str]) -> str:
    """``text`` up to the earliest stop string (all of it when none occurs)."""
    cut = first_stop(text, stops)
    return text if cut < 0 else text[:cut]


def stop_prefix_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is the start of a stop string (and not the whole stop): the
    characters a stream must hold back until the next token shows whether a stop string begins there."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def end_token_ids(tokenizer) -> set[int]:
    """Token ids after which nothing more is part of the answer: EOS and the pad id."""
    return {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
