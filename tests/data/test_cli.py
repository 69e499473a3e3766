import json

from PIL import Image
from typer.testing import CliRunner

from aligngpt.cli import app


def _conv(question, answer):
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def _setup(tmp_path, records):
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "a.png")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    return data, root


def test_data_check_passes_on_good_data(tmp_path):
    data, root = _setup(
        tmp_path, [{"id": "1", "image": "a.png", "conversations": _conv("<image>\nQ", "A"), "similarity": 0}]
    )
    result = CliRunner().invoke(
        app, ["data", "check", str(data), "--images", str(root), "--stage", "pretrain", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "1 records checked: 1 good, 0 bad" in result.output


def test_data_check_names_every_bad_record_and_fails(tmp_path):
    records = [
        {"id": "ok", "image": "a.png", "conversations": _conv("<image>\nQ", "A"), "similarity": 1},
        {"id": "lvl", "image": "a.png", "conversations": _conv("<image>\nQ", "A"), "similarity": 3},
        {"id": "gone", "image": "b.png", "conversations": _conv("<image>\nQ", "A"), "similarity": 0},
        {"id": "txt", "conversations": _conv("Q", "A")},
    ]
    data, root = _setup(tmp_path, records)
    report = tmp_path / "report.jsonl"
    args = ["data", "check", str(data), "--images", str(root), "--stage", "pretrain", "--levels", "2"]
    result = CliRunner().invoke(app, [*args, "--report", str(report), "--no-progress"])
    assert result.exit_code == 1
    out = result.output
    assert f"{data}:2: record 1 (id 'lvl'): level_out_of_range" in out
    assert f"{data}:3: record 2 (id 'gone'): missing_image" in out
    assert f"{data}:4: record 3 (id 'txt'): text_only_in_pretrain" in out
    assert "4 records checked: 1 good, 3 bad" in out and "missing_image: 1" in out
    assert [json.loads(x)["id"] for x in report.read_text().splitlines()] == ["lvl", "gone", "txt"]


def test_data_check_reports_invalid_json_with_line(tmp_path):
    data, root = _setup(tmp_path, [])
    data.write_text('{"id": "1"}\n{"id": 2,,}\n')
    result = CliRunner().invoke(app, ["data", "check", str(data), "--images", str(root)])
    assert result.exit_code == 2
    assert "data.jsonl: line 2, column 10" in result.output  # the second comma
