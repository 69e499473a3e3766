"""Every number, per-item result and submission file of the golden metric fixtures is reproduced."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from eval_helpers import JUDGED, PREDICTIONS, ReplayJudge, fixture_dir, predictions_path

from aligngpt.evaluation.benchmarks import get_benchmark

TOLERANCE = 1e-9
IGNORED_KEYS = {"notes", "note", "source"}

# benchmark -> [(file written to out_dir, expected file)] that must be byte-identical
SAME_BYTES = {
    "vqav2": [("answers_upload.json", "answers_upload_1/llava_vqav2_mscoco_test-dev2015/aligngpt-13b.json")],
    "vizwiz": [("answers_upload.json", "answers_upload/aligngpt-13b.json")],
    "gqa": [("testdev_balanced_predictions.json", "testdev_balanced_predictions.json")],
    "seed_bench": [("answers_upload.jsonl", "answers_upload/aligngpt-13b.jsonl")],
    "scienceqa_img": [
        ("sqa_output.json", "aligngpt-13b_output.jsonl"),
        ("sqa_result.json", "aligngpt-13b_result.json"),
    ],
    "mm_vet": [
        ("results.json", "results/aligngpt-13b.json"),
        ("aligngpt-13b_gpt-4-0613-grade-1runs.json", "grading/aligngpt-13b_gpt-4-0613-grade-1runs.json"),
    ],
    "llava_bench_in_the_wild": [("reviews.jsonl", "reviews/aligngpt-13b.jsonl")],
    "mme": [
        (f"eval_tool_answers/{p.name}", f"eval_tool/answers/aligngpt-13b/{p.name}")
        for p in sorted((fixture_dir("mme") / "expected/eval_tool/answers/aligngpt-13b").glob("*.txt"))
    ],
}
# benchmark -> [(per-item file written to out_dir, expected per-item file)]
PER_ITEM = {
    name: [("per_item.jsonl", "per_item.jsonl")]
    for name in ("textvqa", "vqav2", "vizwiz", "pope", "scienceqa_img", "mme", "gqa", "seed_bench", "mm_vet")
}
PER_ITEM["mmbench"] = [("per_row.jsonl", "per_row.jsonl"), ("per_question.jsonl", "circular_eval/per_question.jsonl")]


def assert_close(actual, expected, path: str = "") -> None:
    """Recursive comparison: every key of ``expected`` (but notes) must be in ``actual``; floats within 1e-9."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected a dict, got {actual!r}"
        for key, value in expected.items():
            if key in IGNORED_KEYS:
                continue
            assert key in actual, f"{path}.{key} missing"
            assert_close(actual[key], value, f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{path}: {actual!r} != {expected!r}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_close(a, e, f"{path}[{i}]")
    elif isinstance(expected, float) or (isinstance(expected, int) and not isinstance(expected, bool)):
        assert isinstance(actual, int | float) and not isinstance(actual, bool), f"{path}: {actual!r}"
        assert math.isclose(actual, expected, rel_tol=0, abs_tol=TOLERANCE), f"{path}: {actual!r} != {expected!r}"
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Score every fixture once: name -> (metrics read back from metrics.json, out_dir, judge)."""
    results = {}
    for name in PREDICTIONS:
        out = tmp_path_factory.mktemp(name)
        judge = ReplayJudge(fixture_dir(name) / "inputs" / "judge_replies.json") if name in JUDGED else None
        get_benchmark(name).score(fixture_dir(name) / "inputs", predictions_path(name), out, judge=judge)
        results[name] = (json.loads((out / "metrics.json").read_text(encoding="utf-8")), out, judge)
    return results


@pytest.mark.parametrize("name", list(PREDICTIONS))
def test_metrics_match_official(name, scored):
    metrics, _, _ = scored[name]
    expected = json.loads((fixture_dir(name) / "expected" / "metrics.json").read_text(encoding="utf-8"))
    assert_close(metrics, expected, name)


@pytest.mark.parametrize("name", list(PER_ITEM))
def test_per_item_results_match_official(name, scored):
    _, out, _ = scored[name]
    for ours, theirs in PER_ITEM[name]:
        expected = read_jsonl(fixture_dir(name) / "expected" / theirs)
        assert_close(read_jsonl(out / ours), expected, f"{name}/{ours}")


@pytest.mark.parametrize("name", list(SAME_BYTES))
def test_submission_files_are_byte_identical(name, scored):
    _, out, _ = scored[name]
    for ours, theirs in SAME_BYTES[name]:
        assert (out / ours).read_bytes() == (fixture_dir(name) / "expected" / theirs).read_bytes(), ours


def test_mmbench_upload_xlsx_holds_the_official_table(scored):
    pd = pytest.importorskip("pandas")
    _, out, _ = scored["mmbench"]
    expected = json.loads(
        (fixture_dir("mmbench") / "expected/answers_upload/aligngpt-13b.xlsx.records.json").read_text(encoding="utf-8")
    )
    frame = pd.read_excel(out / "answers_upload.xlsx")
    assert list(frame.columns) == expected["columns"]
    records = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in frame.to_dict("records")
    ]
    assert_close(records, expected["records"], "xlsx")


@pytest.mark.parametrize(
    ("name", "expected_file"),
    [
        ("llava_bench_in_the_wild", "judge_requests.jsonl"),
        ("mm_vet", "judge_requests.jsonl"),
        ("mmbench", "circular_eval/judge_requests.jsonl"),
    ],
)
def test_judge_requests_match_official_prompts(name, expected_file, scored):
    _, out, _ = scored[name]
    expected = read_jsonl(fixture_dir(name) / "expected" / expected_file)
    ours = read_jsonl(out / "judge_requests.jsonl")
    assert ours == expected


def test_summary_headline_numbers(scored):
    summary = json.loads((fixture_dir("") / "SUMMARY.json").read_text(encoding="utf-8"))["benchmarks"]
    for name, headline in summary.items():
        metrics, _, _ = scored[name]
        for key, value in headline.items():
            if isinstance(value, dict):  # MM-Vet capability scores are strings in SUMMARY.json
                assert_close(metrics[key], {k: float(v) for k, v in value.items()}, f"{name}.{key}")
            else:
                assert_close(metrics[key], value, f"{name}.{key}")
