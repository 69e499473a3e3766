"""Assemble a new AlignGPT from a pretrained vision encoder and a pretrained causal LM (the start of stage 1)."""

from __future__ import annotations

import os

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from aligngpt.config import AlignGPTConfig
from aligngpt.modeling.aligngpt import AlignGPTForConditionalGeneration


def load_vision_tower(path: str | os.PathLike, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """The vision encoder of a vision-only (``CLIPVisionModel``) or dual (``CLIPModel``, ``SiglipModel``) checkpoint."""
    config = AutoConfig.from_pretrained(str(path))
    vision_config = getattr(config, "vision_config", None)
    if vision_config is None:
        return AutoModel.from_pretrained(str(path), dtype=dtype)
    dual = AutoModel.from_pretrained(str(path), dtype=dtype)
    tower = AutoModel.from_config(vision_config)
    tower.load_state_dict(dual.vision_model.state_dict(), strict=True)
    return tower.to(dtype) if dtype is not None else tower


def build_from_pretrained_parts(
    vision_tower: str | os.PathLike,
    language_model: str | os.PathLike,
    dtype: torch.dtype | None = None,
    **config_kwargs,
) -> AlignGPTForConditionalGeneration:
    """A new AlignGPT: pretrained tower and LLM, fresh projector and alignment module.

    ``config_kwargs`` go to :class:`AlignGPTConfig` (``projector_type``, ``alignment_mode``, ``image_pool_stride``...).
    """
    tower = load_vision_tower(vision_tower, dtype)
    llm = AutoModelForCausalLM.from_pretrained(str(language_model), dtype=dtype)
    config = AlignGPTConfig(vision_config=tower.config.to_dict(), text_config=llm.config.to_dict(), **config_kwargs)
    model = AlignGPTForConditionalGeneration(config, vision_tower=tower, language_model=llm)
    return model.to(dtype) if dtype is not None else model
