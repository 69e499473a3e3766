"""Model folders for the vLLM tests and benchmarks/bench_serve.py, saved by aligngpt (imports nothing of vLLM)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tests.helpers import OFFICIAL

# vLLM's CPU attention has kernels for head sizes 32, 64, 80, ... but not 16 (the usual tiny test models').
VLLM_HEAD_SIZE = 64


@dataclass(frozen=True)
class LlamaSize:
    """The language model's shape; every size keeps heads of :data:`VLLM_HEAD_SIZE`."""

    hidden_size: int = VLLM_HEAD_SIZE
    intermediate_size: int = 2 * VLLM_HEAD_SIZE
    num_layers: int = 2

    @property
    def num_heads(self) -> int:
        return self.hidden_size // VLLM_HEAD_SIZE


def tiny_vllm_model_dir(path: Path, size: LlamaSize = LlamaSize()) -> Path:
    """A random AlignGPT saved by aligngpt (the tests' tiny CLIP tower, 16 image tokens) with a LLaMA of ``size``
    and the official fixture's tokenizer (1000 pieces); returns the model folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from aligngpt.modeling import build_from_pretrained_parts
    from aligngpt.processing import AlignGPTProcessor, load_image_processor, load_tokenizer
    from tests.helpers import tiny_clip_vision_dir

    vision_dir = tiny_clip_vision_dir(path / "parts" / "clip")
    llm_dir = path / "parts" / "llama"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1000, hidden_size=size.hidden_size, intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_layers, num_attention_heads=size.num_heads, num_key_value_heads=size.num_heads,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.1,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(llm_dir)
    load_tokenizer(OFFICIAL / "base_llm").save_pretrained(llm_dir)
    torch.manual_seed(0)
    model = build_from_pretrained_parts(vision_dir, llm_dir)
    processor = AlignGPTProcessor.from_config(model.config, load_tokenizer(llm_dir), load_image_processor(vision_dir))
    out = path / "model"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
