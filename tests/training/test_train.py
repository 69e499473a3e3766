"""End-to-end recipe runs on a tiny model (CPU): losses fall, frozen parameters stay bit-identical, outputs and
hand-offs are complete."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file

from aligngpt.convert.official import STAGE1_ADAPTER
from aligngpt.training.adapter import OUR_ADAPTER, AdapterError, load_stage1_adapter, read_stage1_adapter
from aligngpt.training.config import RESOLVED_CONFIG_NAME, resolve_config
from tests.training.toydata import run

ADAPTER_KEYS = {"projector.0.weight", "projector.0.bias", "projector.2.weight", "projector.2.bias"}


def _weights(directory) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def _same(a: dict, b: dict, prefix: str) -> bool:
    keys = [key for key in a if key.startswith(prefix)]
    assert keys, prefix
    return all(torch.equal(a[key], b[key]) for key in keys)


def _changed(a: dict, b: dict, prefix: str) -> bool:
    return all(not torch.equal(a[key], b[key]) for key in a if key.startswith(prefix) and key.endswith("weight"))


@pytest.fixture(scope="module")
def stage1(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    result = run("pretrain", world, out, model=str(world["model"]), learning_rate=1e-2, save_steps=3)
    return result


@pytest.fixture(scope="module")
def stage2(world, stage1, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage2")
    return run("finetune", world, out, model=str(stage1.output_dir), learning_rate=1e-3)


def test_pretrain_loss_falls_and_only_projector_and_levels_change(world, stage1):
    assert stage1.global_step == 6 and stage1.losses[-1] < stage1.losses[0] - 0.5
    before, after = _weights(world["model"]), _weights(stage1.output_dir)
    assert _same(before, after, "vision_tower.") and _same(before, after, "language_model.")
    assert _same(before, after, "alignment.gate.")
    assert _changed(before, after, "projector.") and _changed(before, after, "alignment.level_embeddings")
    assert any("tokens_per_second" in entry for entry in stage1.log_history)


def test_pretrain_writes_adapter_in_both_layouts_and_checkpoints_hold_the_level_table(stage1):
    out = stage1.output_dir
    weights = _weights(out)
    official = torch.load(out / STAGE1_ADAPTER, weights_only=True)
    assert set(official) == {f"mm_{key}" for key in ADAPTER_KEYS} | {"align_indicators.indicator_embs"}
    assert torch.equal(official["align_indicators.indicator_embs"], weights["alignment.level_embeddings"])
    ours = read_stage1_adapter(out / OUR_ADAPTER)
    assert set(ours) == ADAPTER_KEYS | {"alignment.level_embeddings"}
    assert all(torch.equal(ours[key], weights[key]) for key in ours)
    checkpoint = _weights(out / "checkpoints" / "checkpoint-3")
    assert "alignment.level_embeddings" in checkpoint
    assert not torch.equal(checkpoint["alignment.level_embeddings"], weights["alignment.level_embeddings"])
    saved = yaml.safe_load((out / RESOLVED_CONFIG_NAME).read_text())
    assert saved["recipe"] == "pretrain" and saved["learning_rate"] == 1e-2 and saved["template"] == "plain"
    assert (out / "processor_config.json").is_file() and (out / "chat_template.jinja").is_file()


def test_the_final_model_folder_holds_no_trainer_leftovers(stage1):
    out = stage1.output_dir
    assert sorted(path.name for path in out.iterdir()) == [
        "additional_chat_templates", "chat_template.jinja", "checkpoints", "config.json", "generation_config.json",
        "mm_projector_align.bin", "model.safetensors", "preprocessor_config.json", "processor_config.json",
        "run_inputs.json", "stage1_adapter.safetensors", "tokenizer.json", "tokenizer_config.json", "train_config.yaml",
        "trainer_state.json",
    ]  # fmt: skip
    assert sorted(path.name for path in (out / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-6"]


def test_finetune_continues_stage1_and_freezes_level_table(stage1, stage2):
    assert stage2.losses[-1] < stage2.losses[0] - 0.5
    before, after = _weights(stage1.output_dir), _weights(stage2.output_dir)
    assert _same(before, after, "vision_tower.") and _same(before, after, "alignment.level_embeddings")
    for prefix in ("language_model.", "projector.", "alignment.gate."):
        assert _changed(before, after, prefix), prefix


def test_finetune_starts_from_an_official_stage1_file(world, stage1, tmp_path):
    from aligngpt.training.model_init import build_starting_point
    from aligngpt.training.recipes import get_recipe

    parts = world["parts"]
    config = resolve_config(
        "finetune",
        overrides=dict(
            data=str(world["finetune"]), output_dir=str(tmp_path), vision_tower=str(parts / "clip"),
            llm=str(parts / "llama"), stage1_adapter=str(stage1.output_dir / STAGE1_ADAPTER),
        ),
    )  # fmt: skip
    model = build_starting_point(config, get_recipe("finetune")).model
    state, trained = model.state_dict(), _weights(stage1.output_dir)
    adapter = ADAPTER_KEYS | {"alignment.level_embeddings"}
    assert all(torch.equal(state[f"model.{key}"], trained[key]) for key in adapter)

    torch.save({"mm_projector.0.weight": torch.zeros(3, 3)}, tmp_path / "bad.bin")
    with pytest.raises(AdapterError, match=r"bad\.bin: missing"):
        load_stage1_adapter(model, tmp_path / "bad.bin")


def test_finetune_without_stage1_is_refused(world, tmp_path):
    parts = world["parts"]
    with pytest.raises(ValueError, match="starts from a stage-1 result"):
        resolve_config(
            "finetune",
            overrides=dict(data="x.json", output_dir=str(tmp_path), vision_tower=str(parts / "clip"),
                           llm=str(parts / "llama")),
        )  # fmt: skip


@pytest.mark.parametrize("mode", ["global", "none"])
def test_ablation_modes_train(world, stage1, tmp_path, mode):
    result = run("finetune", world, tmp_path, model=str(stage1.output_dir), alignment_mode=mode, max_steps=3)
    assert result.losses[-1] < result.losses[0]
    after = _weights(tmp_path)
    if mode == "none":
        assert not any(key.startswith("alignment.") for key in after)
    else:
        before = _weights(stage1.output_dir)
        assert _same(before, after, "alignment.")  # neither the level table nor the (unused) gate train


def test_pretrain_can_also_train_the_llm_at_a_scaled_lr(world, tmp_path):
    result = run(
        "pretrain", world, tmp_path, model=str(world["model"]), train_llm_lr_scale=0.5, max_steps=2,
        gradient_checkpointing=True,
    )  # fmt: skip
    before, after = _weights(world["model"]), _weights(tmp_path)
    assert _changed(before, after, "language_model.model.layers.") and _same(before, after, "vision_tower.")
    assert result.global_step == 2


def test_cached_vision_features_give_the_same_run(world, stage1, tmp_path):
    result = run(
        "pretrain", world, tmp_path, model=str(world["model"]), learning_rate=1e-2, save_steps=3,
        cache_vision_features=True,
    )  # fmt: skip
    assert (tmp_path / "vision_features.safetensors").is_file()
    assert result.losses == pytest.approx(stage1.losses, abs=1e-5)


def test_fixed_mode_pretrain_learns_one_prefix_token_without_levels(world, tmp_path):
    from tests.training.toydata import pretrain_records, write_json

    records = [{k: v for k, v in record.items() if k != "similarity"} for record in pretrain_records()]
    data = write_json(tmp_path / "no_levels.json", records)
    result = run(
        "pretrain", world, tmp_path / "out", data=str(data), model=str(world["model"]), alignment_mode="fixed:5",
        learning_rate=1e-2, max_steps=3,
    )  # fmt: skip
    assert result.losses[-1] < result.losses[0]
    before = _weights(world["model"])["alignment.level_embeddings"]
    after = _weights(tmp_path / "out")["alignment.level_embeddings"]
    changed = [row for row in range(before.shape[0]) if not torch.equal(before[row], after[row])]
    assert changed == [5]  # only the fixed row is the learned prefix token


def test_length_grouped_steps_train_and_need_modality_grouping(world, tmp_path):
    result = run(
        "finetune", world, tmp_path, model=str(world["model"]), group_by_modality_length=True,
        length_group_steps=2, max_steps=2,
    )  # fmt: skip
    assert result.global_step == 2
    with pytest.raises(ValueError, match="length_group_steps > 1 needs group_by_modality_length"):
        resolve_config(
            "finetune",
            overrides=dict(data="x.json", output_dir=str(tmp_path), model=str(world["model"]),
                           group_by_modality_length=False, length_group_steps=4),
        )  # fmt: skip


def test_length_sorted_accumulation_rounds_train_like_one_micro_batch(world, tmp_path):
    # one step = 4 samples: as one micro-batch, or as 2 length-sorted accumulation rounds of 2 (less padding)
    whole = run("finetune", world, tmp_path / "whole", model=str(world["model"]), group_by_modality_length=True)
    rounds = run(
        "finetune", world, tmp_path / "rounds", model=str(world["model"]), group_by_modality_length=True,
        per_device_train_batch_size=2,
    )  # fmt: skip
    assert rounds.losses == pytest.approx(whole.losses, rel=1e-5)
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "rounds")
    assert all(torch.allclose(a[key], b[key], atol=1e-5) for key in a)


def test_skipped_records_make_one_report_per_run_counted_across_workers(world, tmp_path):
    """Bad records skipped inside DataLoader workers are counted, and a rerun into the same folder does not append
    a second copy of the report."""
    import json

    from tests.training.toydata import finetune_records, write_json

    records = finetune_records()
    records[1]["image"] = "missing.png"
    records[3]["conversations"] = []
    data = write_json(tmp_path / "some_bad.json", records)
    out = tmp_path / "run"
    settings = dict(model=str(world["model"]), data=str(data), on_bad_record="skip", dataloader_num_workers=2,
                    max_steps=3)  # fmt: skip
    for _ in range(2):
        result = run("finetune", world, out, **settings)
        assert result.skipped_records == 2
        report = [json.loads(line) for line in (out / "bad_records.jsonl").read_text().splitlines()]
        assert sorted(r["index"] for r in report) == [1, 3]
