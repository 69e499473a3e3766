"""Inference: loading, batched generation, chat, serving."""

from aligngpt.inference.pipeline import AlignGPTPipeline, Answer, GenerationSettings, load

__all__ = ["AlignGPTPipeline", "Answer", "GenerationSettings", "load"]
