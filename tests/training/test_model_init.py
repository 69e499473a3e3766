"""The starting point's processor is derived from the model's final config (mode override, aspect ratio, length)."""

from __future__ import annotations

import pytest

from aligngpt.processing import AlignGPTProcessor, load_image_processor, load_tokenizer
from aligngpt.training.config import resolve_config
from aligngpt.training.model_init import build_starting_point
from aligngpt.training.recipes import get_recipe


def test_processor_follows_the_overridden_model_config(world, tmp_path):
    config = resolve_config(
        "finetune",
        overrides=dict(
            data=str(world["finetune"]), output_dir=str(tmp_path), model=str(world["model"]), alignment_mode="none",
            image_aspect_ratio="square", model_max_length=77,
        ),
    )  # fmt: skip
    start = build_starting_point(config, get_recipe("finetune"))
    model, processor = start.model, start.processor
    assert model.config.alignment_mode == "none" and model.alignment is None
    assert not processor.use_alignment_token
    assert (processor.image_aspect_ratio, processor.model_max_length) == ("square", 77)
    derived = AlignGPTProcessor.from_config(
        model.config, load_tokenizer(world["model"]), load_image_processor(world["model"])
    )
    assert processor.settings() == derived.settings()


def test_gate_text_setting_reaches_the_model_config_and_bad_values_are_refused(world, tmp_path):

    settings = dict(data=str(world["finetune"]), output_dir=str(tmp_path), model=str(world["model"]))
    assert (
        build_starting_point(
            resolve_config("finetune", overrides=settings), get_recipe("finetune")
        ).model.config.gate_text
        == "all"
    )
    config = resolve_config("finetune", overrides=dict(settings, gate_text="prompt"))
    assert build_starting_point(config, get_recipe("finetune")).model.config.gate_text == "prompt"
    with pytest.raises(ValueError, match="gate_text must be one of"):
        resolve_config("finetune", overrides=dict(settings, gate_text="answer"))
