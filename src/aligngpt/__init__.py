"""AlignGPT: multi-modal LLMs with adaptive alignment capability (arXiv 2405.14129)."""

from __future__ import annotations

from aligngpt import registration as _registration

__version__ = "0.1.0"

# AutoConfig / AutoModel / AutoModelForImageTextToText know "aligngpt_vlm" after only ``import aligngpt``; lazily,
# so that this import stays free of torch (see aligngpt.registration).
_registration.install()


def load(*args, **kwargs):
    """Load a model folder into an :class:`~aligngpt.inference.AlignGPTPipeline` (see ``aligngpt.inference.load``)."""
    from aligngpt.inference.pipeline import load as _load

    return _load(*args, **kwargs)


__all__ = ["__version__", "load"]
