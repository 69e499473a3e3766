import json

import pytest
from PIL import Image

from aligngpt.data.problems import ProblemKind
from aligngpt.data.records import RecordFile
from aligngpt.data.validation import (
    BadRecordError,
    BadRecordPolicy,
    RecordValidator,
    ValidationConfig,
    validate_records,
)


def _conv(*turns):
    return [{"from": role, "value": value} for role, value in turns]


GOOD_IMAGE = {
    "id": "good",
    "image": "a.png",
    "conversations": _conv(("human", "<image>\nQ?"), ("gpt", "A.")),
    "similarity": 3,
}
GOOD_TEXT = {"id": "text", "conversations": _conv(("human", "Q?"), ("gpt", "A."), ("human", "Q2"), ("gpt", "A2"))}

# (record, stage, expected problem kinds)
CASES = [
    (GOOD_IMAGE, "pretrain", set()),
    (GOOD_TEXT, "finetune", set()),
    ({**GOOD_IMAGE, "image": "missing.png"}, None, {"missing_image"}),
    ({**GOOD_IMAGE, "image": "broken.png"}, None, {"corrupt_image"}),
    ({**GOOD_IMAGE, "image": "huge.png"}, None, {"image_too_large"}),
    ({**GOOD_IMAGE, "image": "../a.png"}, None, {"unsafe_image_path"}),
    ({**GOOD_IMAGE, "conversations": _conv(("human", "Q?"), ("gpt", "A."))}, None, {"no_image_token"}),
    (
        {**GOOD_IMAGE, "conversations": _conv(("human", "<image><image>Q"), ("gpt", "A"))},
        None,
        {"multiple_image_tokens"},
    ),
    ({**GOOD_IMAGE, "conversations": _conv(("human", "Q"), ("gpt", "<image> A"))}, None, {"image_token_in_answer"}),
    ({**GOOD_TEXT, "conversations": _conv(("human", "<image>\nQ"), ("gpt", "A"))}, None, {"image_token_in_text_only"}),
    ({**GOOD_IMAGE, "conversations": []}, None, {"empty_conversation", "no_image_token"}),
    ({**GOOD_TEXT, "conversations": _conv(("gpt", "A"), ("human", "Q"))}, None, {"roles_not_alternating"}),
    (
        {**GOOD_TEXT, "conversations": _conv(("human", "Q"), ("human", "Q"), ("gpt", "A"))},
        None,
        {"roles_not_alternating"},
    ),
    ({**GOOD_TEXT, "conversations": _conv(("human", "Q"), ("gpt", "  "))}, None, {"empty_value"}),
    ({k: v for k, v in GOOD_IMAGE.items() if k != "similarity"}, "pretrain", {"missing_level"}),
    ({k: v for k, v in GOOD_IMAGE.items() if k != "similarity"}, "finetune", set()),
    ({**GOOD_IMAGE, "similarity": 8}, "pretrain", {"level_out_of_range"}),
    ({**GOOD_IMAGE, "similarity": -1}, None, {"level_out_of_range"}),
    ({**GOOD_IMAGE, "similarity": 2.0}, "pretrain", {"level_not_integer"}),
    ({**GOOD_IMAGE, "similarity": "2"}, "pretrain", {"level_not_integer"}),
    (GOOD_TEXT, "pretrain", {"text_only_in_pretrain"}),
    ({"id": "m", "conversations": "hello"}, None, {"malformed"}),
    (["not", "an", "object"], None, {"malformed"}),
    ({**GOOD_IMAGE, "image": ["a.png", "a.png"]}, None, {"multiple_images"}),
]


@pytest.fixture
def root(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    Image.new("RGB", (300, 300)).save(folder / "huge.png")
    (folder / "broken.png").write_bytes((folder / "a.png").read_bytes()[:30])
    (tmp_path / "a.png").write_bytes(b"")
    return folder


def _write(tmp_path, records, name="d.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records, indent=1))
    return RecordFile(path)


def _validator(root, stage=None, **kw):
    return RecordValidator(ValidationConfig(image_root=root, stage=stage, max_pixels=10_000, **kw))


@pytest.mark.parametrize(("record", "stage", "kinds"), CASES)
def test_each_problem_is_detected(tmp_path, root, record, stage, kinds):
    records = _write(tmp_path, [GOOD_TEXT, record])
    _, report = _validator(root, stage).check_index(records, 1)
    got = set() if report is None else {p.kind.value for p in report.problems}
    assert got == kinds
    if report is not None:
        text = report.describe()
        assert str(records.path) in text and "record 1" in text
        if isinstance(record, dict):
            assert repr(record["id"]) in text


def test_too_long_uses_the_callers_length_function(tmp_path, root):
    records = _write(
        tmp_path,
        [
            GOOD_IMAGE,
            {**GOOD_IMAGE, "id": "long", "conversations": _conv(("human", "<image>\n" + "w " * 50), ("gpt", "x"))},
        ],
    )

    def length_of(record):  # fake processor: image expands to 20 tokens, one token per word
        return 20 + sum(len(m.value.replace("<image>", "").split()) for m in record.conversations)

    validator = _validator(root, model_max_length=40, length_of=length_of)
    assert validator.check_index(records, 0)[1] is None
    _, report = validator.check_index(records, 1)
    assert [p.kind for p in report.problems] == [ProblemKind.TOO_LONG]
    assert "71 tokens" in report.problems[0].message

    def broken(record):
        raise ValueError("cannot build the loss mask")

    _, report = _validator(root, model_max_length=40, length_of=broken).check_index(records, 0)
    assert report.problems[0].kind is ProblemKind.LENGTH_ERROR and "loss mask" in report.problems[0].message


def _mixed(tmp_path):
    data = [
        GOOD_IMAGE,
        {**GOOD_IMAGE, "id": "b1", "image": "missing.png"},
        GOOD_TEXT,
        {**GOOD_TEXT, "id": "b2", "conversations": []},
    ]
    return _write(tmp_path, data)


def test_error_policy_raises_on_first_bad_record(tmp_path, root):
    with pytest.raises(BadRecordError, match=r"record 1 \(id 'b1'\): missing_image"):
        validate_records(_mixed(tmp_path), _validator(root), on_bad_record="error", progress=False)


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_policy_counts_and_writes_a_report(tmp_path, root, workers):
    records = _mixed(tmp_path)
    report_path = tmp_path / "bad.jsonl"
    result = validate_records(
        records, _validator(root), on_bad_record="skip", report_path=report_path, workers=workers, progress=False
    )
    assert list(result.good_indices) == [0, 2]
    assert result.counts == {"missing_image": 1, "empty_conversation": 1}
    lines = [json.loads(x) for x in report_path.read_text().splitlines()]
    assert [(x["index"], x["id"], x["file"]) for x in lines] == [
        (1, "b1", str(records.path)),
        (3, "b2", str(records.path)),
    ]
    assert lines[0]["problems"][0]["kind"] == "missing_image"
    assert "2 bad" in result.summary()


def test_lazy_policy_admits_good_records_and_reports_each_bad_one_once(tmp_path, root):
    records = _mixed(tmp_path)
    report_path = tmp_path / "lazy.jsonl"
    skip = BadRecordPolicy(_validator(root), "skip", report_path)
    admitted = [skip.admit(records, i) for i in (0, 1, 2, 3, 1)]
    assert [r.id if r else None for r in admitted] == ["good", None, "text", None, None]
    assert skip.skipped == 2 and skip.counts["missing_image"] == 1
    assert [json.loads(x)["index"] for x in report_path.read_text().splitlines()] == [1, 3]
    strict = BadRecordPolicy(_validator(root), "error")
    assert strict.admit(records, 0).id == "good"
    with pytest.raises(BadRecordError, match="b2"):
        strict.admit(records, 3)
    with pytest.raises(ValueError):
        BadRecordPolicy(_validator(root), "ignore")
