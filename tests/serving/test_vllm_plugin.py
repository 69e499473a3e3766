"""The vLLM plugin (serving/vllm) against aligngpt's own ``generate``: float32 greedy token ids must be equal.

The reference is computed here; serving/vllm/tests/run_cases.py runs the same cases through vLLM in the vLLM
environment (see tests/serving/vllm_env.py; skipped without it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from aligngpt.processing.templates import Segment
from tests.serving.models import tiny_vllm_model_dir
from tests.serving.vllm_env import GATE_SCALE, LEVEL_SCALE, make_images, run_in_vllm_env, sharpen_alignment

MAX_NEW_TOKENS = 12
MODES = ("adaptive", "local", "global", "uniform", "fixed:2", "none")

PROMPTS = {
    "image_first": "USER: <image>\nWhat is in the picture? ASSISTANT:",
    "image_last": "USER: Tell me about the colors of this scene, describe it in detail. <image> ASSISTANT:",
    "text_only": "USER: What is a red car? ASSISTANT:",
    "image_first_long": "USER: <image>\nDescribe the image, and tell me what the two dogs in it are doing. ASSISTANT:",
    "same_image_other_question": "USER: <image>\nIs it blue? ASSISTANT:",
}
IMAGES = {"image_first": "wide", "image_last": "tall", "image_first_long": "wide", "same_image_other_question": "wide"}


def reference(model_dir: Path, cases: list[dict], batches: list[list[str]]) -> dict:
    """aligngpt's greedy ids per case (each batch one left-padded ``generate``), prompt ids and pixel values."""
    from aligngpt import load

    pipe = load(model_dir, dtype="float32", device="cpu")
    by_name = {case["name"]: case for case in cases}
    eos = pipe.processor.tokenizer.eos_token_id
    results = []
    for batch in batches:
        chosen = [by_name[name] for name in batch]
        modes = {case.get("alignment_mode") for case in chosen}
        assert len(modes) == 1, "one alignment mode per reference batch"
        mode = modes.pop()
        saved_mode = pipe.model.config.alignment_mode
        if mode:
            pipe.model.config.alignment_mode = mode
        processor = pipe.processor
        if mode == "none":
            processor = type(processor).from_config(
                pipe.model.config, processor.tokenizer, processor.image_processor, use_alignment_token=False
            )
        images = [Image.open(case["image"]).convert("RGB") if case["image"] else None for case in chosen]
        inputs = processor([case["prompt"] for case in chosen], images=images)
        with torch.no_grad():
            out = pipe.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=0)
        pipe.model.config.alignment_mode = saved_mode
        row = {}
        for name, ids in zip(batch, out[:, inputs["input_ids"].shape[1] :].tolist()):
            row[name] = ids[: ids.index(eos) + 1] if eos in ids else ids
        results.append(row)
    pixels = {case["image"]: pipe.processor.preprocess_images([Image.open(case["image"])])[0].tolist()
              for case in cases if case["image"]}  # fmt: skip
    prompt_ids = {case["name"]: pipe.processor._tokenize_segments([Segment(case["prompt"])])[0] for case in cases}
    return {"batches": results, "pixel_values": pixels, "prompt_ids": prompt_ids}


def run_vllm(model_dir: Path, cases: list[dict], batches: list[list[str]], work: Path) -> dict:
    spec = work / f"cases-{model_dir.name}.json"
    out = work / f"vllm-{model_dir.name}.json"
    spec.write_text(json.dumps({"max_new_tokens": MAX_NEW_TOKENS, "cases": cases, "batches": batches}))
    run_in_vllm_env("run_cases.py", "--model", str(model_dir), "--cases", str(spec), "--out", str(out))
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = tmp_path_factory.mktemp("vllm")
    model_dir = tiny_vllm_model_dir(work / "tiny")
    sharpen_alignment(model_dir, GATE_SCALE, LEVEL_SCALE)
    images = make_images(work)
    cases = [
        {"name": name, "prompt": prompt, "image": str(images[IMAGES[name]]) if name in IMAGES else None}
        for name, prompt in PROMPTS.items()
    ]
    for mode in MODES:
        cases.append({"name": f"mode_{mode}", "prompt": PROMPTS["image_last"], "image": str(images["tall"]),
                      "alignment_mode": mode})  # fmt: skip
    batches = [
        list(PROMPTS),  # mixed lengths, image first / last / none, one image under two questions
        ["image_first"],  # again alone: prefix-cache hits from the batch above
        *[[f"mode_{mode}"] for mode in MODES],
    ]
    return work, model_dir, cases, batches


@pytest.fixture(scope="module")
def results(setup):
    work, model_dir, cases, batches = setup
    return reference(model_dir, cases, batches), run_vllm(model_dir, cases, batches, work)


def test_vllm_tokenises_and_preprocesses_as_aligngpt(results):
    ours, theirs = results
    assert theirs["prompt_ids"] == ours["prompt_ids"]
    for path, pixels in ours["pixel_values"].items():
        assert torch.equal(torch.tensor(theirs["pixel_values"][path]), torch.tensor(pixels)), path


def test_vllm_greedy_ids_equal_aligngpt_generate(results):
    ours, theirs = results
    assert theirs["batches"] == ours["batches"]


def test_the_alignment_modes_differ_so_the_equality_can_fail(results):
    ours, _ = results
    by_mode = {mode: ours["batches"][2 + index][f"mode_{mode}"] for index, mode in enumerate(MODES)}
    assert len({tuple(ids) for ids in by_mode.values()}) >= 4, by_mode
    assert by_mode["adaptive"] != by_mode["global"]


def test_a_broken_gate_changes_vllm_outputs(setup, results):
    """Control: the same folder with the gate's last layer negated must give other ids than the reference."""
    work, model_dir, cases, batches = setup
    ours, _ = results
    broken = work / "broken"
    shutil.copytree(model_dir, broken)
    sharpen_alignment(broken, -1.0, 1.0)
    image_cases = [case for case in cases if case["image"] and not case.get("alignment_mode")]
    got = run_vllm(broken, image_cases, [[case["name"] for case in image_cases]], work)["batches"][0]
    expected = ours["batches"][0]
    assert any(got[name] != expected[name] for name in got), "negating the gate changed no output"
