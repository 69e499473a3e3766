"""Text that the prompts of every layer share: the image marker and LLaVA's short-answer instruction.

Import-free (no torch, no transformers), so the light command-line paths (``aligngpt data check``) can use it.
"""

from __future__ import annotations

# Where the image goes in a user message; the processor replaces it by the image-token run. Also the added special
# token whose id marks the image positions in ``input_ids``.
IMAGE_TOKEN = "<image>"
# The answer-format instruction LLaVA's short-answer question files end with (after a line break).
SHORT_ANSWER_INSTRUCTION = "Answer the question using a single word or phrase."
