"""TrainingDataset + TrainingCollator: templates, image placement, levels, bad records, lengths, cached features."""

from __future__ import annotations

import json

import pytest
import torch

from aligngpt.data.collator import TrainingCollator
from aligngpt.data.dataset import VISION_FEATURES_KEY, TrainingDataset
from aligngpt.data.validation import BadRecordError
from aligngpt.modeling import IGNORE_INDEX
from aligngpt.processing import AlignGPTProcessor
from tests.training.toydata import finetune_records, pretrain_records, write_images, write_json


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tests.helpers import tiny_model_dir

    root = tmp_path_factory.mktemp("dataset")
    model_dir = tiny_model_dir(root / "tiny")
    write_images(root / "images")
    return root, AlignGPTProcessor.from_pretrained(model_dir)


def _decode_supervised(processor, sample):
    return processor.tokenizer.decode([label for label in sample.labels if label != IGNORE_INDEX])


def test_pretrain_sample_uses_plain_template_level_and_alignment_slot(setup):
    root, processor = setup
    data = write_json(root / "pre.json", pretrain_records(copies=1))
    dataset = TrainingDataset(data, processor, "pretrain", root / "images")
    sample = dataset[1]
    record = json.loads(data.read_text())[1]
    assert sample.alignment_level == record["similarity"]
    assert sample.input_ids[:2] == [processor.bos_token_id, processor.alignment_token_id]
    assert (
        sample.input_ids[2 : 2 + processor.num_image_tokens] == [processor.image_token_id] * processor.num_image_tokens
    )
    # plain template: the instruction text is dropped, the caption + "\n" is the only supervised text
    assert _decode_supervised(processor, sample).strip() == record["conversations"][1]["value"]
    assert len(sample.input_ids) == 2 + processor.num_image_tokens + len(
        processor.tokenizer(record["conversations"][1]["value"] + "\n", add_special_tokens=False)["input_ids"]
    )
    assert sample.pixel_values.shape == (3, 16, 16)


def test_finetune_image_moves_to_front_and_answers_are_supervised(setup):
    root, processor = setup
    records = finetune_records(copies=1)
    records[0]["conversations"][0]["value"] = "What colour is it? <image>"  # image after the question
    dataset = TrainingDataset(write_json(root / "ft.json", records), processor, "finetune", root / "images")
    sample = dataset[0]
    at = sample.input_ids.index(processor.image_token_id)
    after = processor.tokenizer.decode(sample.input_ids[at + processor.num_image_tokens :])
    assert after.startswith("\nWhat colour is it? ASSISTANT:")  # "<image>\n" + question
    assert sample.alignment_level is None  # stage 2: the gate decides
    assert _decode_supervised(processor, sample).split() == ["It", "is", "red.</s>", "Yes.</s>"]
    text_only = dataset[len(records) - 1]
    assert not text_only.has_image and processor.alignment_token_id not in text_only.input_ids


def test_missing_level_is_an_error_naming_the_record(setup):
    root, processor = setup
    records = pretrain_records(copies=1)
    del records[2]["similarity"]
    dataset = TrainingDataset(write_json(root / "nolevel.json", records), processor, "pretrain", root / "images")
    with pytest.raises(BadRecordError, match=r"nolevel\.json.*record 2.*p0-blue.*missing_level"):
        dataset[2]


def test_skip_reports_bad_records_and_returns_the_next_good_one(setup):
    root, processor = setup
    records = pretrain_records(copies=1)
    records[1]["image"] = "absent.png"
    records[2]["conversations"] = []
    report = root / "bad.jsonl"
    dataset = TrainingDataset(
        write_json(root / "bad.json", records), processor, "pretrain", root / "images",
        on_bad_record="skip", report_path=report,
    )  # fmt: skip
    assert dataset[1].meta["id"] == records[3]["id"]
    assert dataset[2].meta["id"] == records[3]["id"]
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert [(line["id"], line["problems"][0]["kind"]) for line in lines] == [
        ("p0-green", "missing_image"),
        ("p0-blue", "empty_conversation"),
    ]
    assert dataset.skipped == 2


def test_text_only_records_are_rejected_in_pretraining(setup):
    root, processor = setup
    records = pretrain_records(copies=1) + [finetune_records(copies=1)[-1]]
    dataset = TrainingDataset(write_json(root / "mixed.json", records), processor, "pretrain", root / "images")
    with pytest.raises(BadRecordError, match="text_only_in_pretrain"):
        dataset[len(records) - 1]


def test_lengths_are_signed_word_counts(setup):
    root, processor = setup
    records = finetune_records(copies=1)
    dataset = TrainingDataset(write_json(root / "len.json", records), processor, "finetune", root / "images")
    words = [sum(len(turn["value"].split()) for turn in record["conversations"]) for record in records]
    expected = [count if "image" in record else -count for count, record in zip(words, records)]
    assert dataset.lengths == expected


def test_collator_pads_right_and_passes_levels_and_cached_features(setup):
    root, processor = setup
    data = write_json(root / "coll.json", pretrain_records(copies=1))
    dataset = TrainingDataset(data, processor, "pretrain", root / "images")
    samples = [dataset[0], dataset[1]]
    batch = TrainingCollator(processor)(samples)
    assert batch["attention_mask"][:, 0].all()  # right padding: every row starts real
    assert batch["alignment_levels"].tolist() == [sample.alignment_level for sample in samples]
    assert batch["pixel_values"].shape[0] == 2

    cached = {name: torch.full((processor.num_image_tokens, 32), float(i)) for i, name in enumerate(["red.png"])}
    dataset.vision_features = cached
    sample = dataset[0]
    assert sample.pixel_values is None and VISION_FEATURES_KEY in sample.meta
    batch = TrainingCollator(processor)([sample])
    assert "pixel_values" not in batch and torch.equal(batch["vision_features"][0], cached["red.png"])
    with pytest.raises(ValueError, match="mixes images with cached vision features"):
        TrainingCollator(processor)([sample, dataset[1]])


def test_cached_samples_equal_fresh_ones_and_are_built_once(setup, monkeypatch):
    root, processor = setup
    data = write_json(root / "cached.json", pretrain_records(copies=2))
    fresh = TrainingDataset(data, processor, "pretrain", root / "images")
    cached = TrainingDataset(data, processor, "pretrain", root / "images", cache_samples=True)
    first = [cached[i] for i in range(len(cached))]
    builds = []
    original = TrainingDataset.build_sample
    monkeypatch.setattr(TrainingDataset, "build_sample", lambda self, record: builds.append(record) or original(
        self, record))  # fmt: skip
    for index, sample in enumerate(first):
        again, expected = cached[index], fresh[index]
        assert again is sample  # served from memory
        assert (again.input_ids, again.labels, again.alignment_level) == (
            expected.input_ids, expected.labels, expected.alignment_level)  # fmt: skip
        assert torch.equal(again.pixel_values, expected.pixel_values)
    assert len(builds) == len(first)  # only the uncached dataset built samples again
