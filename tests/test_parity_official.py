"""Parity with the official AlignGPT code on the golden fixtures in tests/fixtures/official_tiny.

Tolerances follow the fixture README: logits atol/rtol 1e-4, loss 1e-5, gate weights / indicator vectors / image
features 1e-5, integer arrays exact, argmax exact where the official top1-top2 margin exceeds 1e-3.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from aligngpt.convert.official import batch_from_official, convert_official
from aligngpt.processing import Segment
from tests.helpers import OFFICIAL, decoder_inputs_embeds

TRAIN_CASES = ("pretrain", "ft_images", "ft_mixed", "ft_textonly")
FORWARD_CASES = (*TRAIN_CASES, "infer_prompts")


def _case(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    folder = OFFICIAL / "cases" / name
    arrays = {path.stem: np.load(path) for path in folder.glob("*.npy")}
    return json.loads((folder / "expected.json").read_text()), arrays


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    model, processor, notes = convert_official(
        OFFICIAL / "checkpoints" / "aligngpt_tiny_finetune",
        tmp_path_factory.mktemp("ft"),
        vision_tower=OFFICIAL / "clip_vision_tiny",
    )
    assert notes == []
    return model, processor


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    # The stage-1 config names its tower relative to the fixture folder, resolved against the working directory.
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(OFFICIAL)
        model, processor, notes = convert_official(
            "checkpoints/aligngpt_tiny_pretrain", tmp_path_factory.mktemp("pt"), base_llm="base_llm"
        )
    assert len(notes) == 1 and "alignment.gate.0.weight" in notes[0]
    return model, processor


def _model_for(name, finetuned, pretrained):
    return (pretrained if name == "pretrain" else finetuned)[0]


def _run_case(name, model, marker_ids=None):
    """Our forward on a case's official batch; ``marker_ids`` (image, alignment) replace the official sentinels."""
    expected, arrays = _case(name)
    markers = {} if marker_ids is None else dict(zip(("image_token_id", "alignment_token_id"), marker_ids))
    labels = torch.from_numpy(arrays["labels"]) if "labels" in arrays else None
    align_ids = torch.from_numpy(arrays["align_ids"]) if "align_ids" in arrays else None
    batch = batch_from_official(
        torch.from_numpy(arrays["input_ids"]),
        torch.from_numpy(arrays["attention_mask"]).bool(),
        labels,
        torch.from_numpy(arrays["images"]),
        align_ids,
        **markers,
    )
    with torch.no_grad(), decoder_inputs_embeds(model) as captured:
        output = model(**batch)
    return expected, arrays, batch, output, captured["inputs_embeds"]


@pytest.mark.parametrize("name", FORWARD_CASES)
def test_forward_matches_official(name, finetuned, pretrained):
    model = _model_for(name, finetuned, pretrained)
    expected, arrays, batch, output, embeds = _run_case(name, model)
    order = expected["output_row_to_input_index"]  # official output row -> our (input-order) row

    if expected["loss"] is not None:
        assert output.loss.item() == pytest.approx(expected["loss"], abs=1e-5)

    # Our vocabulary extends the official one by the marker tokens, whose logits are masked.
    vocab = arrays["logits_sel"].shape[-1]
    markers = list(model.config.marker_token_ids)
    assert markers and min(markers) >= vocab
    assert bool((output.logits[..., markers] == torch.finfo(output.logits.dtype).min).all())
    rows, positions = arrays["logits_sel_index"][:, 0], arrays["logits_sel_index"][:, 1]
    ours = output.logits[[order[r] for r in rows], positions, :vocab].numpy()
    np.testing.assert_allclose(ours, arrays["logits_sel"], atol=1e-4, rtol=1e-4)

    valid = arrays["final_attention_mask"].astype(bool)
    logits = output.logits[order, :, :vocab].numpy()
    stats = arrays["logits_stats"]
    lse = torch.logsumexp(torch.from_numpy(logits), dim=-1).numpy()
    np.testing.assert_allclose(lse[valid], stats[..., 0][valid], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(logits.max(-1)[valid], stats[..., 1][valid], atol=1e-4, rtol=1e-4)
    confident = valid & (stats[..., 4] > 1e-3)
    np.testing.assert_array_equal(logits.argmax(-1)[confident], arrays["logits_argmax"][confident])

    # Final layout: the same mask, labels and token types position by position.
    np.testing.assert_array_equal(batch["attention_mask"][order].numpy(), arrays["final_attention_mask"])
    if "final_labels" in arrays:
        np.testing.assert_array_equal(batch["labels"][order].numpy(), arrays["final_labels"])
    image_mask, align_mask = model.model.marker_masks(batch["input_ids"][order])
    token_type = np.where(valid, 1, 0)
    token_type[image_mask.numpy()] = 2
    token_type[align_mask.numpy()] = 3
    np.testing.assert_array_equal(token_type, arrays["final_token_type"])

    image_rows = [row for row in order if expected["row_has_image"][order.index(row)]]
    if "gate_weights" in arrays:
        np.testing.assert_allclose(output.alignment_weights[image_rows].numpy(), arrays["gate_weights"], atol=1e-5)
        text_rows = [row for row in range(len(order)) if row not in image_rows]
        assert torch.count_nonzero(output.alignment_weights[text_rows]) == 0
    if "indicator_embeds" in arrays:
        inserted = embeds[image_rows, 1].numpy()
        np.testing.assert_allclose(inserted, arrays["indicator_embeds"], atol=1e-5)


@pytest.mark.parametrize("name", FORWARD_CASES)
def test_marker_token_ids_and_official_sentinels_give_the_same_forward(name, finetuned, pretrained):
    model = _model_for(name, finetuned, pretrained)
    _, _, legacy_batch, legacy, _ = _run_case(name, model)
    markers = (model.config.image_token_id, model.config.alignment_token_id)
    _, _, batch, output, _ = _run_case(name, model, markers)
    assert not bool((batch["input_ids"] < 0).any())
    assert int((legacy_batch["input_ids"] < 0).sum()) == int((batch["input_ids"] >= min(markers)).sum())
    torch.testing.assert_close(output.logits, legacy.logits, atol=0, rtol=0)
    if legacy.loss is not None:
        assert output.loss.item() == legacy.loss.item()


@pytest.mark.parametrize("name", FORWARD_CASES)
def test_image_features_match_official(name, finetuned, pretrained):
    model = _model_for(name, finetuned, pretrained)
    _, arrays = _case(name)
    with torch.no_grad():
        features = model.get_image_features(torch.from_numpy(arrays["images"])).pooler_output.numpy()
    np.testing.assert_allclose(features[:, :4], arrays["image_features_head"], atol=1e-5)
    stats = np.stack([features.mean((1, 2)), features.std((1, 2)), np.abs(features).sum((1, 2))], axis=1)
    np.testing.assert_allclose(stats, arrays["image_features_stats"], rtol=1e-4, atol=1e-4)


def test_greedy_generation_matches_official(finetuned):
    model, _ = finetuned
    expected = json.loads((OFFICIAL / "cases" / "generate" / "expected.json").read_text())
    arrays = {path.stem: np.load(path) for path in (OFFICIAL / "cases" / "generate").glob("*.npy")}
    ids = torch.from_numpy(arrays["input_ids"])
    batch = batch_from_official(ids, torch.ones_like(ids), pixel_values=torch.from_numpy(arrays["images"]))
    out = model.generate(**batch, max_new_tokens=5, do_sample=False, output_scores=True, return_dict_in_generate=True)
    new_tokens = out.sequences[0, batch["input_ids"].shape[1] :].tolist()
    assert new_tokens == expected["use_cache_True"]["new_tokens"]
    scores = torch.stack(out.scores)[:, 0]
    vocab = arrays["scores"].shape[-1]
    assert bool((scores[:, vocab:] == float("-inf")).all())  # the marker tokens are suppressed
    np.testing.assert_allclose(scores[:, :vocab].numpy(), arrays["scores"], atol=1e-4, rtol=1e-4)


def _official_rows(name: str) -> list[list[int]]:
    _, arrays = _case(name)
    return [row[mask.astype(bool)].tolist() for row, mask in zip(arrays["input_ids"], arrays["attention_mask"])]


@pytest.mark.parametrize("name", ("ft_images", "ft_mixed", "ft_textonly"))
def test_processor_reproduces_official_ids_and_labels(name, finetuned):
    _, processor = finetuned
    expected, arrays = _case(name)
    sources = json.loads((OFFICIAL / "cases" / name / "sources.json").read_text())
    official_ids = _official_rows(name)
    samples = []
    for row, source in enumerate(sources):
        image = Image.open(OFFICIAL / "images" / source["image"]) if source.get("image") else None
        sample = processor.encode_conversation(source["conversations"], image, template="vicuna_v1")
        ids = [-200 if t == processor.image_token_id else t for t in sample.input_ids]
        assert _collapse_image(ids, processor) == official_ids[row]
        samples.append(sample)
    batch = processor.collate(samples, padding_side="right")
    order = expected["output_row_to_input_index"]
    np.testing.assert_array_equal(batch["labels"][order].numpy(), arrays["final_labels"])
    image_rows = [row for row, s in enumerate(samples) if s.has_image]
    if image_rows:
        np.testing.assert_array_equal(batch["pixel_values"].numpy(), arrays["images"][image_rows])
    else:
        assert "pixel_values" not in batch  # text-only samples never reach the vision tower


def _collapse_image(ids: list[int], processor) -> list[int]:
    """Official form: one -200 for the image and no alignment slot."""
    out = [t for t in ids if t != processor.alignment_token_id]
    if -200 in out:
        at = out.index(-200)
        out[at : at + processor.num_image_tokens] = [-200]
    return out


def test_processor_reproduces_official_pretrain_and_prompt_ids(pretrained, finetuned):
    _, plain_processor = pretrained
    sources = json.loads((OFFICIAL / "cases" / "pretrain" / "sources.json").read_text())
    official = _official_rows("pretrain")
    _, arrays = _case("pretrain")
    for row, source in enumerate(sources):
        if "prompt" in source:
            before, after = source["prompt"].split("<image>")
            segments = [Segment(before + "<image>"), Segment(after, supervised=True)]
        else:
            segments = plain_processor.render(source["conversations"], template="plain")
        sample = plain_processor.encode_segments(segments)
        ids = [-200 if t == plain_processor.image_token_id else t for t in sample.input_ids]
        assert _collapse_image(ids, plain_processor) == official[row]
        n = len(sample.labels)
        assert sample.labels == arrays["final_labels"][row][:n].tolist()
    image = Image.open(OFFICIAL / "images" / sources[0]["image"])
    square = plain_processor.preprocess_images([image])
    np.testing.assert_array_equal(square[0].numpy(), arrays["images"][0])

    _, processor = finetuned
    prompts = json.loads((OFFICIAL / "cases" / "infer_prompts" / "sources.json").read_text())
    for row, source in enumerate(prompts):
        sample = processor.encode_segments([Segment(source["prompt"])])
        ids = [-200 if t == processor.image_token_id else t for t in sample.input_ids]
        assert _collapse_image(ids, processor) == _official_rows("infer_prompts")[row]
