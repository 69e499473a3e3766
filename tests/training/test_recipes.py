"""Recipes: exactly which parameters train, and with which LR multiplier (no training needed)."""

from __future__ import annotations

import pytest

from aligngpt.modeling import AlignGPTForConditionalGeneration
from aligngpt.training.recipes import RecipeOptions, get_recipe


def _trainable(model) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


def _prefixes(names: set[str]) -> set[str]:
    out = set()
    for name in names:
        name = name.removeprefix("model.")  # the base model's prefix
        if name.startswith(("language_model.", "lm_head.")):
            out.add("language_model")
        elif name.startswith("alignment.gate."):
            out.add("gate")
        else:
            out.add(name.split(".")[0] if not name.startswith("alignment.") else name)
    return out


@pytest.fixture
def load(world):
    def _load(**overrides) -> AlignGPTForConditionalGeneration:
        return AlignGPTForConditionalGeneration.from_pretrained(world["model"], **overrides)

    return _load


def test_pretrain_trains_projector_and_level_table_only(load):
    model = load()
    groups = get_recipe("pretrain").apply(model, RecipeOptions())
    assert _prefixes(_trainable(model)) == {"projector", "alignment.level_embeddings"}
    assert {group.name for group in groups} == {"projector", "level_table"}
    assert get_recipe("pretrain").uses_levels(model)


def test_pretrain_llm_option_adds_the_llm_at_its_lr_scale(load):
    model = load()
    groups = get_recipe("pretrain").apply(model, RecipeOptions(train_llm_lr_scale=0.5))
    assert _prefixes(_trainable(model)) == {"projector", "alignment.level_embeddings", "language_model"}
    assert {group.name: group.lr_scale for group in groups}["language_model"] == 0.5
    with pytest.raises(ValueError, match="train_llm_lr_scale"):
        get_recipe("pretrain").apply(load(), RecipeOptions(train_llm_lr_scale=0.0))


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("adaptive", {"language_model", "projector", "gate"}),
        ("local", {"language_model", "projector", "gate"}),
        ("global", {"language_model", "projector"}),
        ("uniform", {"language_model", "projector"}),
        ("none", {"language_model", "projector"}),
    ],
)
def test_finetune_freezes_level_table_and_tower(load, mode, expected):
    model = load(alignment_mode=mode)
    get_recipe("finetune").apply(model, RecipeOptions())
    assert _prefixes(_trainable(model)) == expected
    assert not get_recipe("finetune").uses_levels(model)


def test_pretrain_baseline_needs_no_levels(load):
    model = load(alignment_mode="none")
    get_recipe("pretrain").apply(model, RecipeOptions())
    assert _prefixes(_trainable(model)) == {"projector"}
    assert not get_recipe("pretrain").uses_levels(model)


def test_lora_recipe_trains_adapters_projector_and_gate(load):
    from aligngpt.training.lora import apply_lora

    model = load()
    apply_lora(model, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    groups = get_recipe("finetune-lora").apply(model, RecipeOptions(projector_lr_scale=0.1))
    trainable = _trainable(model)
    assert all("lora_" in name for name in trainable if name.startswith("language_model."))
    assert any("lora_" in name for name in trainable)
    assert _prefixes(trainable) == {"language_model", "projector", "gate"}
    assert {group.name: group.lr_scale for group in groups}["projector"] == 0.1


def test_gate_lr_scale_sets_the_gate_group_of_every_stage2_recipe(load):
    from aligngpt.training.config import resolve_config

    model = load()
    groups = get_recipe("finetune").apply(model, RecipeOptions(gate_lr_scale=10.0))
    assert {group.name: group.lr_scale for group in groups} == {"language_model": 1.0, "projector": 1.0, "gate": 10.0}
    with pytest.raises(ValueError, match="gate_lr_scale must be > 0"):
        resolve_config(overrides={"recipe": "finetune", "data": "d.json", "output_dir": "o", "gate_lr_scale": 0.0})


def test_unknown_recipe_is_an_error():
    with pytest.raises(ValueError, match="known: pretrain, finetune, finetune-lora"):
        get_recipe("stage3")
