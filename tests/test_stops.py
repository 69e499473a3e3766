"""Stop strings: the one cutter that batch decoding, streaming and the lmms-eval plugin share."""

from __future__ import annotations

from types import SimpleNamespace

from aligngpt.processing.stops import cut_at_stops, end_token_ids, first_stop, stop_prefix_length


def test_the_earliest_stop_wins_whatever_the_order_of_the_list():
    assert first_stop("one</s>two###", ["###", "</s>"]) == 3
    assert cut_at_stops("one</s>two###", ["###", "</s>"]) == "one"
    assert first_stop("no stop here", ["###", ""]) == -1
    assert cut_at_stops("no stop here", ["", "###"]) == "no stop here"


def test_a_stream_holds_back_only_what_may_still_become_a_stop():
    stops = ["</s>", "###"]
    assert stop_prefix_length("answer</", stops) == 2
    assert stop_prefix_length("answer#", stops) == 1
    assert stop_prefix_length("answer", stops) == 0
    assert stop_prefix_length("a</s", stops) == 3  # a whole stop would already be cut, never held
    assert stop_prefix_length("<", ["</s>"]) == 1


def test_end_ids_are_eos_and_pad_when_the_tokenizer_has_them():
    assert end_token_ids(SimpleNamespace(eos_token_id=2, pad_token_id=0)) == {0, 2}
    assert end_token_ids(SimpleNamespace(eos_token_id=2, pad_token_id=None)) == {2}
