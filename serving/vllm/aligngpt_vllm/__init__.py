"""vLLM plugin for AlignGPT model folders.

vLLM calls :func:`register` in every process it starts (entry point ``vllm.general_plugins``). It registers the
folder's config class with transformers' ``AutoConfig`` and the model class with vLLM's model registry; the model
module itself is imported lazily by vLLM, when a model of this architecture is loaded.
"""

from __future__ import annotations

ARCHITECTURE = "AlignGPTForConditionalGeneration"
MODEL_CLASS = "aligngpt_vllm.model:AlignGPTForVLLM"


def register() -> None:
    """Register the config (``model_type`` ``aligngpt_vlm``), the model class and ``tokenizer_mode="aligngpt"``
    (aligngpt's tokenisation; its renderer is vLLM's HF one); idempotent."""
    from vllm import ModelRegistry
    from vllm.renderers.registry import RENDERER_REGISTRY
    from vllm.tokenizers.registry import TokenizerRegistry

    from aligngpt_vllm.config import register_config
    from aligngpt_vllm.tokenizer import TOKENIZER_MODE

    register_config()
    TokenizerRegistry.tokenizers.setdefault(TOKENIZER_MODE, ("aligngpt_vllm.tokenizer", "AlignGPTTokenizer"))
    RENDERER_REGISTRY.renderers.setdefault(TOKENIZER_MODE, ("vllm.renderers.hf", "HfRenderer"))
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)


__all__ = ["ARCHITECTURE", "register"]
