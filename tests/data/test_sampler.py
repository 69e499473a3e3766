import json

import numpy as np
import pytest
from torch.utils.data import BatchSampler

from aligngpt.data.records import Record, RecordFile
from aligngpt.data.sampler import ModalityLengthGroupedSampler, modality_lengths, word_count_length


def _lengths(n_image, n_text, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.concatenate([rng.integers(1, 500, n_image), -rng.integers(1, 500, n_text)])
    return rng.permutation(lengths).tolist()


def _micro_batches(sampler, size):
    return list(BatchSampler(sampler, size, drop_last=False))


@pytest.mark.parametrize(
    ("n_image", "n_text", "batch", "world", "accum"),
    [(300, 77, 4, 2, 2), (100, 100, 8, 1, 1), (37, 0, 4, 2, 1), (0, 29, 4, 1, 3), (5, 3, 16, 1, 1), (131, 59, 6, 3, 2)],
)
def test_micro_batches_are_single_modality_except_one_leftover(n_image, n_text, batch, world, accum):
    lengths = _lengths(n_image, n_text, seed=n_image + n_text)
    sampler = ModalityLengthGroupedSampler(lengths, batch, world_size=world, grad_accum=accum, seed=1)
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths)))  # a permutation
    mixed = [k for k, mb in enumerate(_micro_batches(sampler, batch)) if len({lengths[i] > 0 for i in mb}) > 1]
    assert len(mixed) <= 1
    n_batches = -(-len(lengths) // batch)
    if (n_image % (batch * world * accum)) % batch + (n_text % (batch * world * accum)) % batch <= batch:
        assert mixed in ([], [n_batches - 1])  # the final leftover micro-batch
    else:
        assert mixed == [n_batches - 2]  # impossible to be last: the last one is then single-modality


def test_order_is_deterministic_by_seed_and_epoch():
    lengths = _lengths(200, 90)
    a = ModalityLengthGroupedSampler(lengths, 4, world_size=2, seed=7)
    b = ModalityLengthGroupedSampler(lengths, 4, world_size=2, seed=7)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) != first
    assert list(ModalityLengthGroupedSampler(lengths, 4, world_size=2, seed=8)) != first


def test_megabatches_balance_devices_and_sort_accumulation_rounds():
    lengths = _lengths(512, 0, seed=3)
    batch, world, accum = 8, 4, 2
    order = list(ModalityLengthGroupedSampler(lengths, batch, world_size=world, grad_accum=accum, seed=0))
    mega = batch * world * accum
    for start in range(0, 512, mega):
        rounds = [order[start + r * batch * world : start + (r + 1) * batch * world] for r in range(accum)]
        for one_round in rounds:
            # the devices that run a round together: totals differ by at most the largest single length
            totals = [sum(lengths[i] for i in mb) for mb in _micro_batches(one_round, batch)]
            assert max(totals) - min(totals) <= max(abs(x) for x in lengths)
        # one device's accumulated micro-batches are length-sorted: round r holds longer samples than round r + 1
        for longer, shorter in zip(rounds, rounds[1:]):
            assert min(lengths[i] for i in longer) >= max(lengths[i] for i in shorter)


def test_accumulation_rounds_cut_padding_on_one_device():
    lengths = _lengths(640, 0, seed=4)
    batch, accum = 16, 4
    order = list(ModalityLengthGroupedSampler(lengths, batch, grad_accum=accum, seed=0))
    padded = sum(batch * max(lengths[i] for i in mb) for mb in _micro_batches(order, batch))
    # the same steps' samples in a random order inside each step
    rng = np.random.default_rng(0)
    shuffled = [i for s in range(0, 640, batch * accum) for i in rng.permutation(order[s : s + batch * accum])]
    padded_shuffled = sum(batch * max(lengths[i] for i in mb) for mb in _micro_batches(shuffled, batch))
    assert padded < 0.75 * padded_shuffled


def test_word_count_lengths_follow_the_spec(tmp_path):
    image = {
        "image": "a.png",
        "conversations": [
            {"from": "human", "value": "<image>\nTwo words"},
            {"from": "gpt", "value": "three more  words"},
        ],
    }
    text = {"conversations": [{"from": "human", "value": "hi there"}, {"from": "gpt", "value": ""}]}
    empty = {"conversations": [{"from": "human", "value": " "}]}
    assert modality_lengths([image, text, empty]) == [6, -2, -1]
    assert word_count_length(Record.from_raw(image, 0)) == 6
    path = tmp_path / "d.json"
    path.write_text(json.dumps([image, text, ["malformed"]]))
    assert modality_lengths(RecordFile(path)) == [6, -2, -1]
    with pytest.raises(ValueError, match="length 0"):
        ModalityLengthGroupedSampler([3, 0, -2], 2)


@pytest.mark.parametrize("group_steps", [4, 1000])
def test_length_group_steps_gives_steps_of_similar_length(group_steps):
    lengths = _lengths(640, 64, seed=3)
    batch = 16
    plain = ModalityLengthGroupedSampler(lengths, batch, seed=2)
    grouped = ModalityLengthGroupedSampler(lengths, batch, seed=2, length_group_steps=group_steps)
    order = list(grouped)
    assert sorted(order) == list(range(len(lengths)))
    assert list(grouped) == order  # deterministic

    def padding(sampler):  # padded slots / real lengths over all micro-batches
        batches = _micro_batches(sampler, batch)
        return sum(max(abs(lengths[i]) for i in mb) * len(mb) for mb in batches) / sum(abs(x) for x in lengths)

    assert padding(grouped) < 0.8 * padding(plain)
    mixed = [mb for mb in _micro_batches(grouped, batch) if len({lengths[i] > 0 for i in mb}) > 1]
    assert len(mixed) <= 1


def test_length_group_steps_one_is_the_official_order():
    lengths = _lengths(300, 50, seed=4)
    assert list(ModalityLengthGroupedSampler(lengths, 8, world_size=2, seed=5, length_group_steps=1)) == list(
        ModalityLengthGroupedSampler(lengths, 8, world_size=2, seed=5)
    )
    with pytest.raises(ValueError, match="length_group_steps"):
        ModalityLengthGroupedSampler(lengths, 8, length_group_steps=0)
