"""LoRA on the language model (peft): apply for training, save as a standard peft adapter, load, merge.

A ``finetune-lora`` output folder holds the base model in our format (LLM unmerged; trained projector and gate) plus
``lora_adapter/`` (peft ``adapter_config.json`` + ``adapter_model.safetensors``). ``merge_lora`` folds the adapter
into the LLM weights and writes an ordinary model folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from aligngpt.modeling import AlignGPTForConditionalGeneration

LORA_DIR = "lora_adapter"
_PREFIX = "model.language_model."


def apply_lora(
    model: AlignGPTForConditionalGeneration, r: int, alpha: int, dropout: float, target_modules: list[str]
) -> None:
    """Wrap ``model.language_model`` in a peft ``PeftModel`` with LoRA on ``target_modules`` (in place)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, bias="none")
    model.model.language_model = get_peft_model(model.language_model, config)


def save_lora_adapter(
    model: AlignGPTForConditionalGeneration, directory: str | os.PathLike, state_dict: Mapping[str, torch.Tensor]
) -> Path:
    """Write the adapter of ``model`` to ``directory/lora_adapter``, values from the consolidated ``state_dict``."""
    peft_state = {key[len(_PREFIX) :]: value for key, value in state_dict.items() if key.startswith(_PREFIX)}
    target = Path(directory) / LORA_DIR
    # The vocabulary grew by the marker rows, which LoRA does not train: the base model keeps them.
    model.language_model.save_pretrained(str(target), state_dict=peft_state, save_embedding_layers=False)
    return target


def strip_lora(model: AlignGPTForConditionalGeneration) -> None:
    """Remove the LoRA layers without merging (the base LLM weights stay as they were)."""
    model.model.language_model = model.language_model.unload()


def load_with_lora(path: str | os.PathLike, dtype: torch.dtype | None = None) -> AlignGPTForConditionalGeneration:
    """A ``finetune-lora`` output: base model with the adapter attached (unmerged)."""
    from peft import PeftModel

    path = Path(path)
    if not (path / LORA_DIR).is_dir():
        raise FileNotFoundError(f"{path / LORA_DIR} not found: not a finetune-lora output")
    model = AlignGPTForConditionalGeneration.from_pretrained(str(path), dtype=dtype)
    model.model.language_model = PeftModel.from_pretrained(model.language_model, str(path / LORA_DIR))
    return model.eval()


def merge_lora(source: str | os.PathLike, destination: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Merge the adapter of a ``finetune-lora`` output into the LLM and save model + processor to ``destination``."""
    from aligngpt.processing import AlignGPTProcessor

    model = load_with_lora(source, dtype)
    model.model.language_model = model.language_model.merge_and_unload()
    destination = Path(destination)
    model.save_pretrained(str(destination))
    AlignGPTProcessor.from_pretrained(source).save_pretrained(destination)
    return destination
