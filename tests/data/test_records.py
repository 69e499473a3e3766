import json
import pickle
import tracemalloc

import pytest

import aligngpt.data.records as records_module
from aligngpt.data.problems import ProblemKind, RecordFormatError
from aligngpt.data.records import DataFileError, Record, RecordFile


def _records(n):
    return [
        {
            "id": f"{i:06d}",
            "image": f"coco/{i}.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is é 漢字 in this picture? " * (i % 3)},
                {"from": "gpt", "value": "An answer " * (i % 7)},
            ],
            "similarity": i % 8,
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("chunk", [7, 1 << 22])
@pytest.mark.parametrize("indent", [None, 2])
def test_json_array_random_access_matches_json_load(tmp_path, monkeypatch, chunk, indent):
    monkeypatch.setattr(records_module, "_CHUNK_CHARS", chunk)  # tiny chunks: records straddle buffer ends
    data = _records(60)
    path = tmp_path / "d.json"
    path.write_text("\ufeff" + json.dumps(data, indent=indent, ensure_ascii=indent is None), encoding="utf-8")
    recs = RecordFile(path)
    assert recs.format == "json" and len(recs) == 60
    for i in (0, 59, 17, -1, 3):
        assert recs.raw(i) == data[i]
    lines = path.read_text(encoding="utf-8").split("\n")
    if indent:
        assert all(lines[recs.line_of(i) - 1].strip() == "{" for i in range(60))
    rec = recs[5]
    assert (
        isinstance(rec, Record)
        and rec.id == "000005"
        and rec.level == 5
        and rec.caption == data[5]["conversations"][1]["value"]
    )
    with pytest.raises(IndexError):
        recs.raw(60)


def test_jsonl_random_access_skips_blank_lines(tmp_path):
    data = _records(10)
    path = tmp_path / "d.jsonl"
    path.write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in data[:5])
        + "\n\n"
        + "\n".join(json.dumps(r) for r in data[5:])
        + "\n"
    )
    recs = RecordFile(path)
    assert recs.format == "jsonl" and len(recs) == 10
    assert [recs.raw(i) for i in range(10)] == data
    assert recs.line_of(5) == 7
    assert pickle.loads(pickle.dumps(recs)).raw(9) == data[9]


def test_indexing_keeps_only_offsets_in_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(records_module, "_CHUNK_CHARS", 1 << 16)
    n = 4000
    path = tmp_path / "big.json"
    path.write_text(json.dumps(_records(n)))
    tracemalloc.start()
    recs = RecordFile(path)
    held, peak_index = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    tracemalloc.start()
    loaded = json.loads(path.read_text())
    held_load, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(recs) == len(loaded) == n
    assert held < 64 * n < held_load / 10  # three int64 arrays, not a list of dicts
    assert peak_index < held_load / 3  # streaming: never the whole file at once


def _error_position(text):
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        return err.lineno, err.colno
    raise AssertionError("text is valid JSON")


@pytest.mark.parametrize("chunk", [5, 1 << 22])
def test_json_syntax_errors_name_file_line_and_column(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(records_module, "_CHUNK_CHARS", chunk)
    good = json.dumps(_records(8), indent=2, ensure_ascii=False)
    path = tmp_path / "bad.json"
    for bad in (
        good.replace('"id": "000005"', '"id": "000005",,'),
        good.replace('"similarity": 3', '"similarity": 3 "x": 1'),
        good.replace('"similarity": 6', '"similarity": tru'),
    ):
        path.write_text(bad, encoding="utf-8")
        line, col = _error_position(bad)
        with pytest.raises(DataFileError, match=rf"bad\.json: line {line}, column {col}:"):
            RecordFile(path)
    for bad, where in ((good[:-1] + ",]", "trailing comma"), (good[:-1], "missing"), (good + "x", "extra data")):
        path.write_text(bad, encoding="utf-8")
        with pytest.raises(DataFileError, match=rf"bad\.json: line \d+, column \d+: .*{where}"):
            RecordFile(path)


def test_jsonl_errors_name_line_and_not_json_files_are_refused(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a"}\n\n{"id": "b",}\n')
    with pytest.raises(DataFileError, match=r"bad\.jsonl: line 3, column 12"):
        RecordFile(path)
    other = tmp_path / "notes.json"
    other.write_text("hello")
    with pytest.raises(DataFileError, match="notes.json: line 1"):
        RecordFile(other)
    with pytest.raises(DataFileError, match="no such data file"):
        RecordFile(tmp_path / "absent.json")


def test_malformed_record_shapes_raise_record_format_error():
    with pytest.raises(RecordFormatError) as err:
        Record.from_raw([1, 2], 0)
    assert err.value.problems[0].kind is ProblemKind.MALFORMED
    with pytest.raises(RecordFormatError, match="'value' must be a string"):
        Record.from_raw({"id": "x", "conversations": [{"from": "human", "value": 3}]}, 0)
    with pytest.raises(RecordFormatError) as err:
        Record.from_raw({"id": "x", "image": ["a.png", "b.png"], "conversations": []}, 0)
    assert err.value.problems[0].kind is ProblemKind.MULTIPLE_IMAGES
    rec = Record.from_raw({"id": 7, "conversations": [], "lvl": True}, 3, level_field="lvl")
    assert rec.id == "7" and rec.level is None and not rec.has_image
