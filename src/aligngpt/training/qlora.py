"""QLoRA: the language model in 4 bits (bitsandbytes through transformers' ``BitsAndBytesConfig``) under LoRA.

Only the LLM's decoder linear layers are quantised; its LM head stays in full precision, and so do the modules
outside the LLM (vision tower, projector, alignment module with level table and gate), which are never handed to
the quantiser. The full-precision LLM is kept on the CPU while training runs: the output folder holds it as the base
model (not a 4-bit copy), so ``load_with_lora`` and ``merge-lora`` treat a ``finetune-qlora`` output like a
``finetune-lora`` one.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from aligngpt.errors import UserError
from aligngpt.modeling import AlignGPTForConditionalGeneration

QUANT_TYPE = "nf4"  # 4-bit NormalFloat, with double quantisation of the scales (the QLoRA paper's setting)
DOUBLE_QUANT = True
LLM_FULL_PRECISION_MODULES = ("lm_head",)


class QLoraUnavailableError(UserError, ValueError):
    """The installed bitsandbytes cannot run 4-bit layers on the training device."""


def compute_dtype(bf16: bool, fp16: bool) -> torch.dtype:
    """The dtype the 4-bit layers dequantise to for their matmuls: the training precision."""
    if bf16:
        return torch.bfloat16
    return torch.float16 if fp16 else torch.float32


def quantization_config(dtype: torch.dtype):
    """The ``BitsAndBytesConfig`` of the LLM: NF4 weights, double-quantised scales, matmuls in ``dtype``."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=QUANT_TYPE,
        bnb_4bit_use_double_quant=DOUBLE_QUANT,
        bnb_4bit_compute_dtype=dtype,
        llm_int8_skip_modules=list(LLM_FULL_PRECISION_MODULES),
    )


def check_available(device: torch.device) -> None:
    """Raise :class:`QLoraUnavailableError` when bitsandbytes has no 4-bit backend for ``device``."""
    import bitsandbytes as bnb

    supported = sorted(getattr(bnb, "supported_torch_devices", ()))
    if device.type not in supported:
        raise QLoraUnavailableError(
            f"finetune-qlora: the installed bitsandbytes {bnb.__version__} has no 4-bit backend for {device.type} "
            f"(it supports: {', '.join(supported) or 'none'})"
        )


def quantize_language_model(
    model: AlignGPTForConditionalGeneration, device: torch.device, dtype: torch.dtype
) -> nn.Module:
    """Replace ``model.language_model`` by a 4-bit copy on ``device``, prepared for k-bit training (every weight
    frozen, the remaining 16-bit ones cast to fp32); returns the full-precision LLM it replaced (left where it was,
    to be put back before the final save)."""
    from peft import prepare_model_for_kbit_training

    check_available(device)
    full = model.language_model
    quantized = type(full).from_pretrained(
        None,
        config=copy.deepcopy(full.config),  # the quantiser records itself in the config; the saved one stays clean
        state_dict=full.state_dict(),
        quantization_config=quantization_config(dtype),
        device_map={"": device},
    )
    # peft records the base model's name in the adapter config
    quantized.name_or_path = quantized.config.name_or_path = full.config.name_or_path
    model.model.language_model = prepare_model_for_kbit_training(quantized, use_gradient_checkpointing=False)
    return full


def quantized_module_names(model: nn.Module) -> list[str]:
    """Names of the 4-bit linear layers in ``model`` (bitsandbytes ``Linear4bit``)."""
    import bitsandbytes as bnb

    return [name for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)]
