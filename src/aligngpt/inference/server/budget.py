"""How many tokens a request may use: its prompt against the context, its answer against the server's limit."""

from __future__ import annotations

import copy

from aligngpt.inference.pipeline import AlignGPTPipeline, GenerationSettings
from aligngpt.inference.server.config import ServerConfig
from aligngpt.inference.server.errors import APIError
from aligngpt.inference.server.validation import ChatRequest
from aligngpt.processing import AlignGPTProcessor, Segment


class TokenBudget:
    """Counts prompt tokens (image positions included) and turns a :class:`ChatRequest` into generation settings.

    ``processor`` must not be the one the batching worker uses: tokenizers are not safe to share between threads.
    """

    def __init__(
        self, processor: AlignGPTProcessor, context_length: int, max_prompt_tokens: int, max_tokens_limit: int
    ):
        self.processor = processor
        self.context_length = context_length
        self.max_prompt_tokens = max_prompt_tokens
        self.max_tokens_limit = max_tokens_limit

    @classmethod
    def for_pipeline(cls, pipeline: AlignGPTPipeline, config: ServerConfig) -> TokenBudget:
        """The budget of ``pipeline``'s model, counting with a private copy of its processor and tokenizer."""
        processor = copy.copy(pipeline.processor)
        processor.tokenizer = copy.deepcopy(pipeline.processor.tokenizer)
        text_config = pipeline.model.config.text_config
        context_length = int(
            getattr(text_config, "max_position_embeddings", None) or pipeline.processor.model_max_length
        )
        max_prompt_tokens = config.max_prompt_tokens or min(context_length, pipeline.processor.model_max_length)
        return cls(processor, context_length, max_prompt_tokens, config.max_tokens_limit)

    def count(self, prompt: str) -> int:
        """The prompt's length in model positions (each ``<image>`` counts as its image's positions)."""
        try:
            return len(self.processor.encode_segments([Segment(prompt)]).input_ids)
        except ValueError as err:
            raise APIError(400, str(err), "invalid_value", "messages") from err

    def settings(self, request: ChatRequest, prompt_tokens: int) -> GenerationSettings:
        """The request's sampling settings, its answer capped to the room the context leaves after the prompt."""
        if prompt_tokens > self.max_prompt_tokens:
            raise APIError(
                400, f"the prompt is {prompt_tokens} tokens (image included); the limit is {self.max_prompt_tokens}",
                "context_length_exceeded", "messages",
            )  # fmt: skip
        if request.max_tokens > self.max_tokens_limit:
            raise APIError(
                400, f"max_tokens is {request.max_tokens}; this server allows at most {self.max_tokens_limit}",
                "invalid_value", "max_tokens",
            )  # fmt: skip
        room = max(1, self.context_length - prompt_tokens)
        return GenerationSettings(
            max_new_tokens=min(request.max_tokens, room),
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop,
        )
