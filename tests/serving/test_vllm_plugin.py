"""The vLLM plugin (serving/vllm) against aligngpt's own ``generate``: float32 greedy token ids must be equal.

vLLM lives in its own environment (scripts/build-vllm-env.sh): these tests compute the reference here and run
serving/vllm/tests/run_cases.py with that environment's Python (``ALIGNGPT_VLLM_PYTHON``, default
``.venv-vllm/bin/python``). Without it they are skipped, unless ``ALIGNGPT_REQUIRE_VLLM=1`` (CI's vLLM step).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from aligngpt.processing.templates import Segment
from tests.helpers import REPO_ROOT, subprocess_env

RUNNER = REPO_ROOT / "serving" / "vllm" / "tests" / "run_cases.py"
MAX_NEW_TOKENS = 12
VLLM_TIMEOUT_S = 900
# vLLM's CPU backend otherwise reserves nearly all free memory for its KV cache (21 GiB of 24 seen here).
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}
# Scales that make the alignment token decide the tiny random model's greedy tokens: a peaked, text-dependent gate
# and level rows as large as the token embeddings.
GATE_SCALE = 40.0
LEVEL_SCALE = 4.0
MODES = ("adaptive", "local", "global", "uniform", "fixed:2", "none")


def vllm_python() -> Path | None:
    path = Path(os.environ.get("ALIGNGPT_VLLM_PYTHON", REPO_ROOT / ".venv-vllm" / "bin" / "python"))
    if path.is_file():
        return path
    if os.environ.get("ALIGNGPT_REQUIRE_VLLM") == "1":
        pytest.fail(f"ALIGNGPT_REQUIRE_VLLM=1 but {path} does not exist (scripts/build-vllm-env.sh builds it)")
    pytest.skip(f"no vLLM environment at {path} (scripts/build-vllm-env.sh builds it)", allow_module_level=True)


VLLM_PYTHON = vllm_python()

PROMPTS = {
    "image_first": "USER: <image>\nWhat is in the picture? ASSISTANT:",
    "image_last": "USER: Tell me about the colors of this scene, describe it in detail. <image> ASSISTANT:",
    "text_only": "USER: What is a red car? ASSISTANT:",
    "image_first_long": "USER: <image>\nDescribe the image, and tell me what the two dogs in it are doing. ASSISTANT:",
    "same_image_other_question": "USER: <image>\nIs it blue? ASSISTANT:",
}
IMAGES = {"image_first": "wide", "image_last": "tall", "image_first_long": "wide", "same_image_other_question": "wide"}


def tiny_vllm_model_dir(path: Path) -> Path:
    """The tests' tiny AlignGPT with a LLaMA of head size 64 (vLLM's CPU attention has no kernel for 16)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from aligngpt.modeling import build_from_pretrained_parts
    from aligngpt.processing import AlignGPTProcessor, load_image_processor, load_tokenizer
    from tests.helpers import OFFICIAL, tiny_clip_vision_dir

    vision_dir = tiny_clip_vision_dir(path / "parts" / "clip")
    llm_dir = path / "parts" / "llama"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
        num_key_value_heads=1, bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.1,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(llm_dir)
    load_tokenizer(OFFICIAL / "base_llm").save_pretrained(llm_dir)
    torch.manual_seed(0)
    model = build_from_pretrained_parts(vision_dir, llm_dir)
    processor = AlignGPTProcessor.from_config(model.config, load_tokenizer(llm_dir), load_image_processor(vision_dir))
    out = path / "model"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def sharpen_alignment(model_dir: Path, gate_scale: float, level_scale: float) -> None:
    """Rescale the gate's last layer and the level table of a saved folder in place."""
    from safetensors.torch import load_file, save_file

    path = model_dir / "model.safetensors"
    weights = load_file(path)
    weights["alignment.gate.2.weight"] = weights["alignment.gate.2.weight"] * gate_scale
    weights["alignment.level_embeddings"] = weights["alignment.level_embeddings"] * level_scale
    save_file(weights, path, metadata={"format": "pt"})


def make_images(folder: Path) -> dict[str, Path]:
    generator = torch.Generator().manual_seed(0)
    paths = {}
    for name, size in (("wide", (40, 24)), ("tall", (18, 36))):
        pixels = (torch.rand(size[1], size[0], 3, generator=generator) * 255).to(torch.uint8).numpy()
        paths[name] = folder / f"{name}.png"
        Image.fromarray(pixels).save(paths[name])
    return paths


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
    env = {key: value for key, value in subprocess_env().items() if key != "PYTHONPATH"}
    done = subprocess.run(
        [str(VLLM_PYTHON), str(RUNNER), "--model", str(model_dir), "--cases", str(spec), "--out", str(out)],
        env={**env, **VLLM_ENV},
        capture_output=True, text=True, timeout=VLLM_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, f"vLLM run failed:\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
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
