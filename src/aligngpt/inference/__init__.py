"""Inference: loading, batched generation, chat, batch prediction and serving.

Names are imported lazily so that ``aligngpt --help`` (which imports :mod:`aligngpt.inference.cli`) does not load
torch and transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aligngpt.inference.pipeline import AlignGPTPipeline, Answer, GenerationSettings, load

__all__ = ["AlignGPTPipeline", "Answer", "GenerationSettings", "load"]


def __getattr__(name: str):
    if name in __all__:
        from aligngpt.inference import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'aligngpt.inference' has no attribute {name!r}")
