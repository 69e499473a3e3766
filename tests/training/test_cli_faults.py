"""Bad training data ends ``aligngpt train`` with a message naming the file and record, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aligngpt.cli import app
from tests.helpers import clean_failure, subprocess_env
from tests.training.toydata import finetune_records, quick_settings, write_json

REPO = Path(__file__).resolve().parents[2]


def _flags(world, data: Path, out: Path, **extra) -> list[str]:
    settings = quick_settings(
        recipe="finetune", data=str(data), image_root=str(world["images"]), output_dir=str(out),
        model=str(world["model"]), max_steps=2, **extra,
    )  # fmt: skip
    flags = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            flags += [flag, str(value)]
    return flags


def _one_bad(tmp_path: Path) -> Path:
    records = finetune_records()
    records[1]["image"] = "missing.png"
    return write_json(tmp_path / "one_bad.json", records)


@pytest.mark.parametrize("workers", [0, 1])
def test_on_bad_record_error_names_the_record(world, tmp_path, workers):
    data = _one_bad(tmp_path)
    flags = _flags(world, data, tmp_path / "out", on_bad_record="error", dataloader_num_workers=workers)
    output = clean_failure(CliRunner().invoke(app, ["train", *flags]))
    # one line: file, line, record and problem (a DataLoader worker's traceback text is not repeated)
    assert f"error: {data}:" in output and "record 1 (id 'f0-green'): missing_image" in output
    assert "Original Traceback" not in output and "DataLoader worker" not in output


def test_a_data_file_of_bad_records_only_is_named(world, tmp_path):
    records = finetune_records()
    for record in records:
        record["image"] = "nowhere.png"
    data = write_json(tmp_path / "all_bad.json", records)
    output = clean_failure(
        CliRunner().invoke(app, ["train", *_flags(world, data, tmp_path / "o", on_bad_record="skip")])
    )
    assert f"{data}: no usable record left (all {len(records)} were skipped as bad" in output


def test_broken_json_is_named_through_python_m_aligngpt_training(world, tmp_path):
    data = tmp_path / "broken.json"
    data.write_text(json.dumps(finetune_records())[:-40])
    env = subprocess_env()
    args = [sys.executable, "-m", "aligngpt.training", *_flags(world, data, tmp_path / "o")]
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {data}: line 1, column")


def test_missing_starting_model_is_named_before_loading(world, tmp_path):
    flags = _flags(world, world["finetune"], tmp_path / "o")
    flags[flags.index("--model") + 1] = str(tmp_path / "no-model")
    output = clean_failure(CliRunner().invoke(app, ["train", *flags]))
    assert f"model folder {tmp_path / 'no-model'} does not exist" in output


def test_train_help_marks_required_settings_and_shows_defaults():
    lines = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "250"}).output.splitlines()

    def row(option: str) -> str:
        return next(line for line in lines if f" {option} " in line)

    assert "[required: here or in --config]" in row("--data")
    assert "[required: here or in --config]" in row("--output-dir")
    assert "[default: 42]" in row("--seed") and "[default: pretrain]" in row("--recipe")
    assert "[default: no-resume]" in row("--resume") and "[default: the recipe's]" in row("--learning-rate")
