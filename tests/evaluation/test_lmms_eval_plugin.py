"""The lmms-eval plugin: lmms-eval ``Instance`` requests against a tiny model, entry-point discovery, and the real
``lmms-eval --model aligngpt`` CLI on a tiny local task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from PIL import Image

from tests.helpers import require_module, require_optional, tiny_model_dir

require_module("lmms_eval")  # optional (see docs/evaluation.md); installed by `make test`

from lmms_eval.api.instance import Instance  # noqa: E402
from lmms_eval.models.registry_v2 import ModelRegistryV2  # noqa: E402

from aligngpt.evaluation.lmms_eval_plugin import MODEL_ID, AlignGPTLmms, manifest  # noqa: E402
from aligngpt.inference.pipeline import GenerationSettings  # noqa: E402
from aligngpt.processing.stops import cut_at_stops  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINT = "aligngpt.evaluation.lmms_eval_plugin:manifest"
TASK = "tiny_task"
SPLIT = "test"
CLI_TIMEOUT_S = 300
GREEDY = {"max_new_tokens": 5, "temperature": 0, "do_sample": False}


def _image(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


DOCS = [
    {"question": "what is in the picture?", "image": _image(0)},
    {"question": "is there a red car in this scene? answer yes or no", "image": _image(1)},
    {"question": "tell me about cats", "image": None},
    {"question": "describe it", "image": _image(2)},
]


def doc_to_visual(doc: dict) -> list:
    return [] if doc["image"] is None else [doc["image"]]


def _generate_request(doc_id: int, gen_kwargs: dict) -> Instance:
    args = (DOCS[doc_id]["question"], dict(gen_kwargs), doc_to_visual, doc_id, TASK, SPLIT)
    return Instance("generate_until", args, 0, metadata={"task": TASK, "doc_id": doc_id, "repeats": 1})


def _loglikelihood_request(doc_id: int, continuation: str) -> Instance:
    args = (DOCS[doc_id]["question"], continuation, doc_to_visual, doc_id, TASK, SPLIT)
    return Instance("loglikelihood", args, 0, metadata={"task": TASK, "doc_id": doc_id, "repeats": 1})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("lmms_tiny"))


@pytest.fixture(scope="module")
def lm(model_dir) -> AlignGPTLmms:
    model = AlignGPTLmms.create_from_arg_string(
        f"pretrained={model_dir},device=cpu,dtype=float32", {"batch_size": "1", "device": None}
    )
    model.task_dict = {TASK: {SPLIT: DOCS}}
    return model


@pytest.fixture
def batch_size(lm):
    """Set ``lm.batch_size`` for one test; restored afterwards."""
    original = lm.batch_size

    def set_size(size: int) -> None:
        lm.batch_size = size

    yield set_size
    lm.batch_size = original


def _pipeline_answer(lm, doc: dict, **settings) -> str:
    return lm.pipeline.generate_batch([(doc["image"], doc["question"])], GenerationSettings(**settings))[0].text


# --- generate_until ----------------------------------------------------------------------------------------------
def test_generate_until_matches_the_pipeline_in_request_order_when_batched(lm, batch_size):
    expected = [_pipeline_answer(lm, doc, max_new_tokens=5) for doc in DOCS]
    assert len(set(expected)) > 1  # distinct answers, so a reordering would show
    batch_size(3)
    assert lm.generate_until([_generate_request(i, GREEDY) for i in range(len(DOCS))]) == expected


def test_generate_until_honours_max_new_tokens_and_until(lm):
    full = lm.generate_until([_generate_request(0, {**GREEDY, "max_new_tokens": 8})])[0]
    short = lm.generate_until([_generate_request(0, {**GREEDY, "max_new_tokens": 2})])[0]
    assert full == _pipeline_answer(lm, DOCS[0], max_new_tokens=8)
    assert short == _pipeline_answer(lm, DOCS[0], max_new_tokens=2)
    assert short != full
    stop = full.strip()[len(full.strip()) // 2]  # a character from the middle of the greedy answer
    cut = lm.generate_until([_generate_request(0, {**GREEDY, "max_new_tokens": 8, "until": [stop]})])[0]
    assert cut == full[: full.index(stop)].strip()
    assert stop not in cut


def test_generate_until_passes_sampling_settings(lm):
    sampling = {"max_new_tokens": 6, "do_sample": True, "temperature": 1.5, "top_p": 0.9}
    torch.manual_seed(7)
    ours = lm.generate_until([_generate_request(1, sampling)])[0]
    torch.manual_seed(7)
    expected = _pipeline_answer(lm, DOCS[1], max_new_tokens=6, temperature=1.5, top_p=0.9)
    assert ours == expected


def test_generate_until_rejects_what_aligngpt_cannot_do(lm):
    lm.task_dict[TASK]["multi"] = [{"question": "two images", "images": [_image(3), _image(4)]}]
    two_images = ("q", dict(GREEDY), lambda doc: doc["images"], 0, TASK, "multi")
    request = Instance("generate_until", two_images, 0, metadata={"task": TASK, "doc_id": 0, "repeats": 1})
    with pytest.raises(ValueError, match="has 2 images.*multi_image=first"):
        lm.generate_until([request])
    video = Instance(
        "generate_until",
        ("q", dict(GREEDY), lambda doc: ["clip.mp4"], 0, TASK, SPLIT),
        0,
        metadata={"task": TASK, "doc_id": 0, "repeats": 1},
    )
    with pytest.raises(ValueError, match="only images are supported, got str"):
        lm.generate_until([video])
    with pytest.raises(ValueError, match="num_beams"):
        lm.generate_until([_generate_request(0, {**GREEDY, "num_beams": 3})])


def test_first_image_policy_uses_the_first_image(lm, model_dir):
    first = AlignGPTLmms(pretrained=str(model_dir), device="cpu", dtype="float32", multi_image="first")
    first.task_dict = {TASK: {SPLIT: [{"question": DOCS[0]["question"], "images": [DOCS[0]["image"], _image(9)]}]}}
    request = Instance(
        "generate_until",
        (DOCS[0]["question"], dict(GREEDY), lambda doc: doc["images"], 0, TASK, SPLIT),
        0,
        metadata={"task": TASK, "doc_id": 0, "repeats": 1},
    )
    assert first.generate_until([request]) == [_pipeline_answer(lm, DOCS[0], max_new_tokens=5)]


def test_unknown_model_args_are_named(model_dir):
    with pytest.raises(TypeError, match="conv_template"):
        AlignGPTLmms.create_from_arg_string(f"pretrained={model_dir},conv_template=vicuna_v1")


def test_cut_at_stops_uses_the_earliest_stop():
    assert cut_at_stops("a. b\n\nc", ["\n\n", "."]) == "a"
    assert cut_at_stops("abc", ["", "x"]) == "abc"


# --- generate_until_multi_round ----------------------------------------------------------------------------------
def test_multi_round_feeds_each_answer_to_the_next_round(lm):
    seen = []

    def doc_to_text(doc, previous_output, round_idx, previous_round_info):
        seen.append((list(previous_output), round_idx, previous_round_info))
        follow_up = f"you said {previous_output[-1]}. tell me about cats"
        return [doc["image"]], follow_up, round_idx >= 2, previous_output, {"round": round_idx}

    args = (DOCS[0]["question"], dict(GREEDY), doc_to_visual, doc_to_text, 0, TASK, SPLIT)
    request = Instance("generate_until_multi_round", args, 0, metadata={"task": TASK, "doc_id": 0, "repeats": 1})
    (rounds,) = lm.generate_until_multi_round([request])
    first = _pipeline_answer(lm, DOCS[0], max_new_tokens=5)
    second = _pipeline_answer(
        lm, {"image": DOCS[0]["image"], "question": f"you said {first}. tell me about cats"}, max_new_tokens=5
    )
    assert rounds == [first, second]
    assert seen == [([first], 1, None), ([first, second], 2, {"round": 1})]


# --- loglikelihood -----------------------------------------------------------------------------------------------
def _reference_loglikelihood(lm, doc: dict, continuation: str) -> float:
    """Sum of continuation log-probs from one full forward over prompt + continuation (processor ``__call__``)."""
    pipeline = lm.pipeline
    prompt = pipeline.build_prompt(doc["question"], doc["image"] is not None)
    context_ids = pipeline.encode([prompt], [doc["image"]])["input_ids"][0]
    full = pipeline.encode([prompt + continuation], [doc["image"]])
    ids = full["input_ids"][0]
    assert torch.equal(ids[: len(context_ids)], context_ids)  # the continuation starts a new token here
    with torch.inference_mode():
        log_probs = torch.log_softmax(lm.model(**full).logits[0].float(), dim=-1)
    positions = torch.arange(len(context_ids), len(ids))
    return float(log_probs[positions - 1, ids[positions]].sum())


def test_loglikelihood_equals_a_full_forward_and_is_batch_invariant(lm, batch_size):
    requests = [_loglikelihood_request(i, " yes") for i in range(len(DOCS))]
    requests.append(_loglikelihood_request(1, " no, it is a blue boat"))
    single = lm.loglikelihood(requests)
    batch_size(4)
    batched = lm.loglikelihood(requests)
    for (score, greedy), (batched_score, batched_greedy) in zip(single, batched):
        assert batched_score == pytest.approx(score, abs=1e-4)
        assert batched_greedy == greedy
    references = [_reference_loglikelihood(lm, DOCS[i], " yes") for i in range(len(DOCS))]
    references.append(_reference_loglikelihood(lm, DOCS[1], " no, it is a blue boat"))
    assert [score for score, _ in single] == pytest.approx(references, abs=1e-4)
    assert single[4][0] < single[1][0]  # more tokens, lower log-probability


def _round_trip_continuation(tokenizer, token_ids: list[int]) -> str:
    """The text of the longest prefix of ``token_ids`` that tokenises back to the same ids after the prompt."""
    prefix = "ASSISTANT:"
    prefix_length = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    for k in range(len(token_ids), 0, -1):
        decoded = tokenizer.decode(token_ids[:k])
        for text in (decoded, " " + decoded):  # SentencePiece drops the leading space of a first "▁word"
            if tokenizer(prefix + text, add_special_tokens=False)["input_ids"][prefix_length:] == token_ids[:k]:
                return text
    raise AssertionError(f"no prefix of {token_ids} survives a decode/encode round trip")


def test_loglikelihood_flags_the_greedy_continuation(lm):
    tokenizer = lm.pipeline.processor.tokenizer
    doc = DOCS[0]
    greedy = lm.pipeline.generate_batch([(doc["image"], doc["question"])], GenerationSettings(max_new_tokens=3))[0]
    continuation = _round_trip_continuation(tokenizer, greedy.token_ids)
    other = " yes" if tokenizer(" yes", add_special_tokens=False)["input_ids"][0] != greedy.token_ids[0] else " no"
    (_, is_greedy), (_, other_greedy) = lm.loglikelihood(
        [_loglikelihood_request(0, continuation), _loglikelihood_request(0, other)]
    )
    assert is_greedy is True
    assert other_greedy is False


def test_unconditional_loglikelihood_requests_have_no_document(lm):
    request = Instance("loglikelihood", ("", " yes"), 0, metadata={"task": TASK, "doc_id": 0, "repeats": 1})
    ((score, _),) = lm.loglikelihood([request])
    assert score == pytest.approx(_reference_loglikelihood(lm, {"question": "", "image": None}, " yes"), abs=1e-4)


# --- registration ------------------------------------------------------------------------------------------------
def _entry_point_site(root: Path) -> Path:
    """A folder with a dist-info declaring our entry point, as ``pip install`` of the package would."""
    dist_info = root / "aligngpt_lmms_probe-0.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: aligngpt-lmms-probe\nVersion: 0.0\n")
    (dist_info / "entry_points.txt").write_text(f"[lmms_eval.models]\n{MODEL_ID} = {ENTRY_POINT}\n")
    return root


def test_entry_point_registers_the_model_class(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(_entry_point_site(tmp_path / "site")))
    registry = ModelRegistryV2()
    registry.load_entrypoint_manifests()
    assert registry.get_manifest(MODEL_ID) == manifest()
    assert registry.get_model_class(MODEL_ID) is AlignGPTLmms


def test_pyproject_declares_the_entry_point():
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"].get("entry-points", {})
    if "lmms_eval.models" not in declared:
        pytest.skip('pyproject.toml has no [project.entry-points."lmms_eval.models"] table yet')
    assert declared["lmms_eval.models"] == {MODEL_ID: ENTRY_POINT}


# --- the real CLI ------------------------------------------------------------------------------------------------
TASK_YAML = """task: tiny_aligngpt_cli
dataset_path: {data}
dataset_kwargs:
  load_from_disk: True
test_split: test
output_type: generate_until
doc_to_visual: !function tiny_utils.doc_to_visual
doc_to_text: !function tiny_utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 4
  temperature: 0
  do_sample: false
process_results: !function tiny_utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  - version: 0.0
"""
TASK_UTILS = """
def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    return {"exact_match": float(results[0].strip().lower() == doc["answer"])}
"""


def _local_task(root: Path) -> Path:
    """A tiny task folder: YAML + utils over an image dataset saved with ``datasets.save_to_disk``."""
    import datasets

    features = datasets.Features(
        {"question": datasets.Value("string"), "answer": datasets.Value("string"), "image": datasets.Image()}
    )
    rows = [doc for doc in DOCS if doc["image"] is not None]
    answers = ["yes" if index % 2 else "no" for index in range(len(rows))]
    table = {"question": [d["question"] for d in rows], "answer": answers, "image": [d["image"] for d in rows]}
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(table, features=features)}).save_to_disk(root / "data")
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "tiny_aligngpt_cli.yaml").write_text(TASK_YAML.format(data=root / "data"))
    (tasks / "tiny_utils.py").write_text(TASK_UTILS)
    return tasks


@pytest.mark.slow
def test_lmms_eval_cli_runs_a_local_task(lm, model_dir, tmp_path):
    # lmms-eval 0.7.3's evaluator imports filelock._api, which filelock >= 4 removed (needs filelock<4)
    require_module("filelock._api")
    executable = Path(sys.executable).with_name("lmms-eval")
    require_optional(executable.is_file(), "the lmms-eval console script next to this Python")
    tasks = _local_task(tmp_path)
    site = _entry_point_site(tmp_path / "site")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
    }
    command = [
        str(executable), "--model", "aligngpt", "--model_args", f"pretrained={model_dir},device=cpu,dtype=float32",
        "--tasks", "tiny_aligngpt_cli", "--include_path", str(tasks), "--batch_size", "1",
        "--output_path", str(tmp_path / "out"), "--log_samples",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (samples_file,) = (tmp_path / "out").rglob("*_samples_tiny_aligngpt_cli.jsonl")
    samples = sorted((json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])
    rows = [doc for doc in DOCS if doc["image"] is not None]
    expected = [_pipeline_answer(lm, doc, max_new_tokens=4) for doc in rows]
    assert [sample["filtered_resps"] for sample in samples] == expected
    (results_file,) = (tmp_path / "out").rglob("*_results.json")
    results = json.loads(results_file.read_text())["results"]["tiny_aligngpt_cli"]
    exact = [float(answer.lower() == sample["target"]) for answer, sample in zip(expected, samples)]
    assert results["exact_match,none"] == pytest.approx(sum(exact) / len(exact))
