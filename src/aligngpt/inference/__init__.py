"""Inference: loading, batched generation, chat, serving.

Attributes are imported lazily so that ``aligngpt --help`` does not load torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "AlignGPTPipeline": "aligngpt.inference.pipeline",
    "Answer": "aligngpt.inference.pipeline",
    "GenerationSettings": "aligngpt.inference.pipeline",
    "load": "aligngpt.inference.pipeline",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'aligngpt.inference' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
