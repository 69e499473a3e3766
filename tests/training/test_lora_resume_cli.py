"""LoRA train + merge, kill -9 + resume, and the command line."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from aligngpt.training.config import RESOLVED_CONFIG_NAME
from tests.helpers import subprocess_env
from tests.training.toydata import COLOURS, quick_settings, run

REPO = Path(__file__).resolve().parents[2]


def test_lora_finetune_then_merge_generates_the_same_tokens(world, tmp_path):
    from aligngpt.inference.pipeline import AlignGPTPipeline, GenerationSettings
    from aligngpt.processing import AlignGPTProcessor
    from aligngpt.training.lora import LORA_DIR, load_with_lora, merge_lora

    out = tmp_path / "lora"
    result = run(
        "finetune-lora", world, out, model=str(world["model"]), learning_rate=1e-2, max_steps=3, lora_r=4,
        lora_alpha=8, lora_dropout=0.0,
    )  # fmt: skip
    assert result.losses[-1] < result.losses[0]
    assert (out / LORA_DIR / "adapter_model.safetensors").is_file()
    before, base = load_file(str(world["model"] / "model.safetensors")), load_file(str(out / "model.safetensors"))
    llm = [key for key in before if key.startswith("language_model.")]
    assert set(base) == set(before) and all(torch.equal(before[key], base[key]) for key in llm)  # unmerged base

    merged_dir = merge_lora(out, tmp_path / "merged")
    merged = load_file(str(merged_dir / "model.safetensors"))
    assert set(merged) == set(before)
    assert any(not torch.equal(merged[key], base[key]) for key in llm)

    processor = AlignGPTProcessor.from_pretrained(merged_dir)
    from aligngpt.modeling import AlignGPTForConditionalGeneration

    greedy = GenerationSettings(max_new_tokens=8)
    requests = [(Image.new("RGB", (16, 16), rgb), "What colour is it?") for rgb in COLOURS.values()]
    unmerged_answers = AlignGPTPipeline(load_with_lora(out), processor).generate_batch(requests, greedy)
    merged_model = AlignGPTForConditionalGeneration.from_pretrained(str(merged_dir))
    merged_answers = AlignGPTPipeline(merged_model, processor).generate_batch(requests, greedy)
    for a, b in zip(unmerged_answers, merged_answers):
        assert a.token_ids == b.token_ids and len(a.token_ids) > 0


def _resume_settings(world, out: Path, **extra) -> dict:
    settings = dict(
        recipe="finetune", data=str(world["finetune"]), image_root=str(world["images"]), output_dir=str(out),
        model=str(world["model"]), learning_rate=1e-3, max_steps=8, save_steps=2,
    )  # fmt: skip
    return quick_settings(**{**settings, **extra})


def _flags(settings: dict) -> list[str]:
    args = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            args += [flag, str(value)]
    return args


def _train_cli(world, out: Path, **extra) -> list[str]:
    return [sys.executable, "-m", "aligngpt.training", *_flags(_resume_settings(world, out, **extra))]


def test_kill_9_then_resume_ends_with_the_same_weights(world, tmp_path):
    from aligngpt.training.config import resolve_config
    from aligngpt.training.engine import train

    env = subprocess_env()
    full = tmp_path / "full"
    train(resolve_config(overrides=_resume_settings(world, full)))

    killed = tmp_path / "killed"
    process = subprocess.Popen(_train_cli(world, killed), env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (killed / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists():
        assert process.poll() is None and time.monotonic() < deadline, "training ended before the kill"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists()

    train(resolve_config(overrides=_resume_settings(world, killed, resume=True)))
    a, b = load_file(str(full / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[key], b[key]) for key in a)


def test_resume_with_changed_inputs_is_refused_until_restart(world, tmp_path):
    """--resume with other data content or result-affecting settings names the change (one ``error:`` message from
    the CLI's error boundary) and touches nothing; --restart deletes the checkpoints, old layout included."""
    from aligngpt.cli import app
    from aligngpt.training.run_record import RUN_RECORD_NAME

    data = tmp_path / "finetune.json"
    data.write_bytes(world["finetune"].read_bytes())
    out = tmp_path / "run"
    base = {**_resume_settings(world, out), "data": str(data), "max_steps": 2, "save_steps": 1}

    def train_cli(**extra):
        return CliRunner().invoke(app, ["train", *_flags({**base, **extra})])

    first = train_cli()
    assert first.exit_code == 0, first.output
    checkpoints = out / "checkpoints"
    record = (out / RUN_RECORD_NAME).read_text()
    assert [(c / RUN_RECORD_NAME).read_text() for c in sorted(checkpoints.iterdir())] == [record, record]
    recorded = (out / RESOLVED_CONFIG_NAME).read_text()
    weights = (out / "model.safetensors").read_bytes()
    for extra, named in [({"learning_rate": 2e-3}, "learning_rate: 0.001 -> 0.002"), ({"seed": 7}, "seed: 42 -> 7")]:
        refused = train_cli(resume=True, **extra)
        assert refused.exit_code == 1 and named in refused.output and "--restart" in refused.output, refused.output
        assert isinstance(refused.exception, SystemExit) and "Traceback" not in refused.output
        assert "error: cannot resume from" in refused.output
    text = data.read_text()
    data.write_text(text.replace("It is red.", "It is RED."))  # same size, other content
    assert data.stat().st_size == len(text.encode())
    refused = train_cli(resume=True)
    assert refused.exit_code == 1 and f"content of the data file {data}" in refused.output, refused.output
    assert (out / RESOLVED_CONFIG_NAME).read_text() == recorded  # still says what trained the saved steps
    assert (out / "model.safetensors").read_bytes() == weights

    stale = [checkpoints / "checkpoint-9", out / "checkpoint-7"]  # newer than the restart's; an older layout's
    for folder in stale:
        shutil.copytree(checkpoints / "checkpoint-2", folder)
    restarted = train_cli(restart=True)
    assert restarted.exit_code == 0, restarted.output
    assert not any(folder.exists() for folder in stale)
    assert sorted(c.name for c in checkpoints.iterdir()) == ["checkpoint-1", "checkpoint-2"]
    assert (
        json.loads((checkpoints / "checkpoint-2" / RUN_RECORD_NAME).read_text())["data_sha256"]
        != json.loads(record)["data_sha256"]
    )  # the restarted run's record, with the edited data
    resumed = train_cli(resume=True, progress=True, logging_steps=2)  # bookkeeping settings may change
    assert resumed.exit_code == 0, resumed.output


def test_cli_flags_override_yaml_which_overrides_recipe_defaults(world, tmp_path):
    import typer

    from aligngpt.training.cli import register

    app = typer.Typer()
    register(app)
    config_file = tmp_path / "run.yaml"
    settings = quick_settings(
        data=str(world["pretrain"]), image_root=str(world["images"]), model=str(world["model"]),
        learning_rate=0.05, max_steps=1, warmup_ratio=0.1,
    )  # fmt: skip
    config_file.write_text(yaml.safe_dump({key.replace("_", "-"): value for key, value in settings.items()}))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["train", "--recipe", "pretrain", "--config", str(config_file), "--output-dir", str(out),
              "--learning-rate", "0.02", "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / RESOLVED_CONFIG_NAME).read_text())
    assert saved["learning_rate"] == 0.02  # flag beats YAML
    assert saved["warmup_ratio"] == 0.1 and saved["max_steps"] == 1  # YAML beats recipe defaults
    assert saved["weight_decay"] == 0.0 and saved["image_aspect_ratio"] == "square"  # recipe defaults
    bad = CliRunner().invoke(app, ["train", "--config", str(config_file), "--output-dir", str(out),
                                   "--precision", "fp64"])  # fmt: skip
    assert bad.exit_code != 0 and "precision" in bad.output


@pytest.mark.parametrize("key", ["learning-rate: 1\nbogus: 2\n"])
def test_unknown_yaml_keys_are_named(tmp_path, key):
    from aligngpt.training.config import load_yaml_overrides

    path = tmp_path / "c.yaml"
    path.write_text(key)
    with pytest.raises(ValueError, match=r"c\.yaml: unknown settings \['bogus'\]"):
        load_yaml_overrides(path)


def test_resume_picks_the_newest_complete_checkpoint(tmp_path):
    from aligngpt.training.engine import find_resume_checkpoint

    assert find_resume_checkpoint(tmp_path / "absent") is None
    checkpoints = tmp_path / "checkpoints"
    for step, state in ((2, "{}"), (10, "{}"), (12, None), (14, ""), (16, "{trunc")):
        folder = checkpoints / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "rng_state.pth").write_bytes(b"")
        if state is not None:  # 12: killed before trainer_state.json; 14: disk full; 16: torn
            (folder / "trainer_state.json").write_text(state)
    (checkpoints / "checkpoint-x").mkdir()
    assert find_resume_checkpoint(tmp_path) == checkpoints / "checkpoint-10"


def test_resume_finds_checkpoints_of_older_output_folders(tmp_path):
    from aligngpt.training.engine import find_resume_checkpoint

    legacy = tmp_path / "checkpoint-4"
    legacy.mkdir()
    (legacy / "rng_state.pth").write_bytes(b"")
    (legacy / "trainer_state.json").write_text("{}")
    assert find_resume_checkpoint(tmp_path) == legacy


def test_resume_after_an_empty_trainer_state_falls_back_to_the_previous_checkpoint(world, tmp_path, caplog):
    from aligngpt.cli import app

    out = tmp_path / "run"
    args = _train_cli(world, out, max_steps=4)[3:]  # the flags, after "python -m aligngpt.training"
    first = CliRunner().invoke(app, ["train", *args])
    assert first.exit_code == 0, first.output
    (out / "checkpoints" / "checkpoint-4" / "trainer_state.json").write_text("")  # a full disk at the last save
    again = CliRunner().invoke(app, ["train", *args, "--resume"])
    assert again.exit_code == 0, again.output
    assert "Traceback" not in again.output and "trained 4 steps" in again.output
    assert "checkpoint-4 (trainer_state.json is empty)" in caplog.text  # the warning names what it skipped
    assert "Loading weights" not in again.output and "Writing model shards" not in again.output  # no noise
    state = (out / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text()
    assert '"global_step": 4' in state  # checkpoint-4 was written again, after resuming from checkpoint-2
