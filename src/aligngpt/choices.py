"""The allowed values of settings that the model config and the training and data configs share.

Import-free (no torch, no transformers), so a command can check its options before any model library loads.
"""

from __future__ import annotations

# How an image becomes a square before the vision tower: padded with the mean colour, or resized as it is.
IMAGE_ASPECT_RATIOS = ("pad", "square")
# Which text positions the gate averages in training: every text token (the official code: prompt and answer) or the
# prompt only (the answer excluded, which is what the gate sees at inference).
GATE_TEXT_SPANS = ("all", "prompt")
