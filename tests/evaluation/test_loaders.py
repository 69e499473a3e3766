"""Loaders build the prompts the official inference scripts used (checked against the fixtures' answer files)."""

from __future__ import annotations

import json

import pytest
from eval_helpers import fixture_dir, predictions_path

from aligngpt.evaluation.benchmarks import PAPER_BENCHMARKS, get_benchmark
from aligngpt.evaluation.benchmarks.base import MULTIPLE_CHOICE_SUFFIX, MULTIPLE_CHOICE_SUFFIX_CN
from aligngpt.fileio import MissingDataError
from aligngpt.prompts import SHORT_ANSWER_INSTRUCTION

LOADER_FIXTURES = ["vqav2", "gqa", "vizwiz", "scienceqa_img", "textvqa", "pope", "mme", "mmbench", "seed_bench",
                   "llava_bench_in_the_wild", "mm_vet"]  # fmt: skip
EXPECTED_SETTINGS = {  # (max_new_tokens, image_aspect_ratio) of each benchmark, docs/evaluation.md
    "vqav2": (128, "pad"), "gqa": (128, "pad"), "vizwiz": (128, "pad"), "scienceqa_img": (1024, "square"),
    "textvqa": (128, "pad"), "pope": (128, "pad"), "mme": (128, "pad"), "mmbench": (1024, "pad"),
    "mmbench_cn": (1024, "pad"), "seed_bench": (128, "pad"), "llava_bench_in_the_wild": (1024, "square"),
    "mm_vet": (1024, "square"),
}  # fmt: skip


def _answers(name):
    lines = predictions_path(name).read_text(encoding="utf-8").splitlines()
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the VQAv2/VizWiz fixtures contain a deliberately broken line
    return out


@pytest.mark.parametrize("name", LOADER_FIXTURES)
def test_answer_records_carry_the_official_prompt(name):
    items = get_benchmark(name).load(fixture_dir(name) / "inputs")
    by_id: dict = {}
    for item in items:
        by_id.setdefault(item.question_id, []).append(item)
    checked = 0
    for answer in _answers(name):
        candidates = by_id.get(answer["question_id"], [])
        matching = [i for i in candidates if i.task().record("x", "m", {})["prompt"] == answer["prompt"]]
        if candidates:
            assert matching, f"{name} {answer['question_id']}: {answer['prompt']!r}"
            checked += 1
    assert checked >= len(items) - 2  # a few fixture answers are deliberately missing or extra


@pytest.mark.parametrize("name", [cls.name for cls in PAPER_BENCHMARKS])
def test_generation_settings(name):
    bench = get_benchmark(name)
    assert (bench.max_new_tokens, bench.image_aspect_ratio) == EXPECTED_SETTINGS[name]


def test_prompts_never_hold_the_image_placeholder():
    for name in LOADER_FIXTURES:
        for item in get_benchmark(name).load(fixture_dir(name) / "inputs"):
            assert "<image>" not in item.prompt, name


def test_short_answer_and_vizwiz_suffixes():
    pope = get_benchmark("pope").load(fixture_dir("pope") / "inputs")
    assert all(i.prompt.endswith("\n" + SHORT_ANSWER_INSTRUCTION) for i in pope)
    assert pope[0].image == fixture_dir("pope") / "inputs" / "val2014" / "COCO_val2014_000000310196.jpg"
    vizwiz = get_benchmark("vizwiz").load(fixture_dir("vizwiz") / "inputs")
    assert vizwiz[0].prompt.endswith(
        "\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n" + SHORT_ANSWER_INSTRUCTION
    )
    textvqa = get_benchmark("textvqa").load(fixture_dir("textvqa") / "inputs")
    assert textvqa[0].prompt.split("\n")[1].startswith("Reference OCR token: ")


def test_scienceqa_text_only_items_have_no_image():
    items = {i.question_id: i for i in get_benchmark("sqa").load(fixture_dir("scienceqa_img") / "inputs")}
    assert items["4"].image is None and items["11"].image is not None
    assert items["11"].prompt.endswith("\nD. Vermont\n" + MULTIPLE_CHOICE_SUFFIX)
    assert items["11"].task().record("B", "m", {})["prompt"].startswith("<image>\nWhat is the name")
    assert not items["4"].task().record("B", "m", {})["prompt"].startswith("<image>")


def test_mmbench_prompt_hint_options_and_image():
    items = get_benchmark("mmbench").load(fixture_dir("mmbench") / "inputs")
    first = items[0]
    assert first.prompt == (
        "Which category does this image belong to?\nA. Oil Painting\nB. Sketch\nC. Digital art\nD. Photo\n"
        + MULTIPLE_CHOICE_SUFFIX
    )
    assert first.image is None and first.has_image
    assert first.open_image().size == (1, 1)
    record = first.task().record("D", "m", {})
    assert list(record)[:4] == ["question_id", "round_id", "prompt", "text"]
    assert record["options"] == ["Oil Painting", "Sketch", "Digital art", "Photo"]
    three_options = [i for i in items if i.question_id == 103][0]
    assert three_options.meta["answer_fields"]["option_char"] == ["A", "B", "C"]
    hinted = [i for i in items if i.question_id == 111][0]
    assert hinted.prompt.count("\n") == 6  # hint line + question + 4 options + suffix


def test_mmbench_all_rounds_rotates_options_and_cn_suffix(tmp_path):
    items = get_benchmark("mmbench", all_rounds=True).load(fixture_dir("mmbench") / "inputs")
    rounds = [i for i in items if i.question_id == 101]
    assert [r.meta["answer_fields"]["round_id"] for r in rounds] == [0, 1, 2, 3]
    assert rounds[1].meta["answer_fields"]["options"][0] == "Sketch"
    assert rounds[1].meta["answer_fields"]["option_char"] == ["B", "C", "D", "A"]
    tsv = tmp_path / "mmbench_dev_cn_20231003.tsv"
    tsv.write_bytes((fixture_dir("mmbench") / "inputs" / "mmbench_dev_20230712.tsv").read_bytes())
    cn = get_benchmark("mmbench_cn").load(tmp_path)
    assert cn[0].prompt.endswith("\n" + MULTIPLE_CHOICE_SUFFIX_CN)


def test_missing_question_file_names_where_it_was_expected(tmp_path):
    with pytest.raises(MissingDataError, match="llava_pope_test.jsonl"):
        get_benchmark("pope").load(tmp_path)


def test_open_image_reports_the_missing_path():
    item = get_benchmark("gqa").load(fixture_dir("gqa") / "inputs")[0]
    with pytest.raises(FileNotFoundError, match="n161313.jpg"):
        item.open_image()


@pytest.mark.parametrize(
    ("payload", "named"),
    [("iVBORw0K", "cannot be opened|not a recognised image format"), ("abc", "base64 image is damaged")],
)
def test_open_image_names_the_question_of_a_damaged_base64_image(payload, named):
    """MMBench images are base64 in the TSV: a cut-off image or broken base64 is a BadRecordError naming the
    question, not a traceback (binascii.Error) or a PIL message with a BytesIO repr."""
    from aligngpt.evaluation.items import EvalItem
    from aligngpt.fileio import BadRecordError

    item = EvalItem("q7", None, "Which?", {"image_base64": payload})
    with pytest.raises(BadRecordError, match=rf"question 'q7'.*({named})") as err:
        item.open_image()
    assert "0x" not in str(err.value)
