"""AlignGPT model: vision tower, projector, alignment module and language model."""

from transformers import AutoModel, AutoModelForImageTextToText

from aligngpt.config import AlignGPTConfig
from aligngpt.modeling.aligngpt import (
    IGNORE_INDEX,
    AlignGPTForConditionalGeneration,
    AlignGPTModel,
    AlignGPTModelOutput,
    AlignGPTOutput,
    AlignGPTPreTrainedModel,
)
from aligngpt.modeling.alignment import AlignmentModule
from aligngpt.modeling.build import build_from_pretrained_parts, load_vision_tower
from aligngpt.modeling.projector import Projector
from aligngpt.modeling.vocabulary import grow_vocabulary, init_marker_rows

AutoModel.register(AlignGPTConfig, AlignGPTModel, exist_ok=True)
AutoModelForImageTextToText.register(AlignGPTConfig, AlignGPTForConditionalGeneration, exist_ok=True)

__all__ = [
    "AlignGPTConfig",
    "AlignGPTForConditionalGeneration",
    "AlignGPTModel",
    "AlignGPTModelOutput",
    "AlignGPTOutput",
    "AlignGPTPreTrainedModel",
    "AlignmentModule",
    "IGNORE_INDEX",
    "Projector",
    "build_from_pretrained_parts",
    "grow_vocabulary",
    "init_marker_rows",
    "load_vision_tower",
]
