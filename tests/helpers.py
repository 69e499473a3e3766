"""Shared test helpers: fixture paths, tiny model builders and hooks."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = FIXTURES / "official_tiny"


@contextlib.contextmanager
def decoder_inputs_embeds(model):
    """Capture the ``inputs_embeds`` the language model's decoder receives."""
    captured: dict[str, torch.Tensor] = {}

    def hook(module, args, kwargs):
        captured["inputs_embeds"] = kwargs["inputs_embeds"].detach().clone()

    handle = model.get_decoder().register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()
