"""The model and processor a run starts from: an AlignGPT folder, or a new one assembled from a vision tower and an
LLM, optionally with a stage-1 adapter (ours or official) loaded on top."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoConfig

from aligngpt.config import vision_has_cls_token
from aligngpt.errors import UserError
from aligngpt.model_files import check_model_source, verify_model_folder, without_weight_progress_bars
from aligngpt.modeling import AlignGPTForConditionalGeneration, build_from_pretrained_parts
from aligngpt.processing import AlignGPTProcessor, add_marker_tokens, load_image_processor, load_tokenizer
from aligngpt.training.adapter import LEVEL_TABLE_PARAMETER, load_stage1_adapter
from aligngpt.training.config import TrainConfig
from aligngpt.training.recipes import Recipe


@dataclass
class StartingPoint:
    model: AlignGPTForConditionalGeneration
    processor: AlignGPTProcessor
    notes: list[str] = field(default_factory=list)


class StartingPointError(UserError, ValueError):
    """The model a run would start from does not suit its recipe."""


def build_starting_point(config: TrainConfig, recipe: Recipe) -> StartingPoint:
    """Load or assemble the model for ``recipe``; raises ``StartingPointError`` when stage 2 would start untrained.

    The processor is made from the model's final config, so its alignment slot, aspect ratio and length limit are
    the model's.
    """
    for source in (config.model, config.vision_tower, config.llm):
        if source is not None:
            check_model_source(source)
            if Path(source).is_dir():
                verify_model_folder(source)
    with without_weight_progress_bars():
        return _build_starting_point(config, recipe)


def _build_starting_point(config: TrainConfig, recipe: Recipe) -> StartingPoint:
    notes: list[str] = []
    level_table_trained = False
    if config.model is not None:
        overrides = {"alignment_mode": config.alignment_mode} if config.alignment_mode else {}
        if config.gate_text:
            overrides["gate_text"] = config.gate_text
        model, info = AlignGPTForConditionalGeneration.from_pretrained(
            config.model, output_loading_info=True, **overrides
        )
        level_table_trained = LEVEL_TABLE_PARAMETER not in info["missing_keys"]
        text_source = image_source = config.model
    else:
        vision_config = AutoConfig.from_pretrained(config.vision_tower)
        vision_config = getattr(vision_config, "vision_config", vision_config)
        model_kwargs = dict(
            projector_type=config.projector_type,
            alignment_mode=config.alignment_mode or "adaptive",
            num_alignment_levels=config.num_alignment_levels,
            image_pool_stride=config.image_pool_stride,
            vision_feature_layer=config.vision_feature_layer,
            model_max_length=config.model_max_length,
            vision_feature_select="patch" if vision_has_cls_token(vision_config) else "all",
        )
        if config.chat_template_name:
            model_kwargs["chat_template_name"] = config.chat_template_name
        if config.gate_text:
            model_kwargs["gate_text"] = config.gate_text
        # The markers become tokens of the LLM's tokenizer; the model's vocabulary grows to cover them.
        image_id, alignment_id = add_marker_tokens(load_tokenizer(config.llm))
        model_kwargs.update(image_token_id=image_id, alignment_token_id=alignment_id)
        model = build_from_pretrained_parts(config.vision_tower, config.llm, **model_kwargs)
        text_source, image_source = config.llm, config.vision_tower
    model.config.model_max_length = config.model_max_length
    if config.stage1_adapter is not None:
        notes += load_stage1_adapter(model, config.stage1_adapter)
        level_table_trained = True
        notes.append(f"loaded the stage-1 adapter {config.stage1_adapter}")
    if recipe.stage == "finetune" and model.config.uses_alignment_token and not level_table_trained:
        raise StartingPointError(
            f"{recipe.name}: the model has no trained level table; start from a stage-1 output (model) or pass "
            "stage1_adapter"
        )
    if recipe.stage == "finetune":
        # The aspect-ratio handling stage 2 trains with is the one inference must use.
        model.config.image_aspect_ratio = config.image_aspect_ratio
    processor = AlignGPTProcessor.from_config(
        model.config, load_tokenizer(text_source), load_image_processor(image_source)
    )
    return StartingPoint(model, processor, notes)
