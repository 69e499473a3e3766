"""A job's events in the OpenAI wire format: one ``chat.completion`` object, or ``chat.completion.chunk`` events.

The stream is server-sent events: a role chunk that carries the gate's ``alignment``, text chunks, a final chunk
with the ``finish_reason``, a usage chunk when asked for, then ``data: [DONE]``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aligngpt.inference.server.dispatch import Failed, Finished, Job, Started, Text
from aligngpt.inference.streaming import Alignment

SSE_DONE = "data: [DONE]\n\n"


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(body: dict) -> str:
    """One server-sent event holding ``body`` as JSON."""
    return f"data: {json.dumps(body)}\n\n"


def _alignment(alignment: Alignment | None) -> dict | None:
    return alignment.as_dict() if alignment else None


def completion_body(
    model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int, alignment: Alignment | None
) -> dict:
    """A whole answer as an OpenAI ``chat.completion`` object, with the ``alignment`` extension."""
    return {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text.strip()},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens),
        "alignment": _alignment(alignment),
    }


@dataclass
class ChunkEncoder:
    """The ``chat.completion.chunk`` events of one streamed answer (one id and creation time for all of them)."""

    model: str
    id: str = field(default_factory=completion_id)
    created: int = field(default_factory=lambda: int(time.time()))

    def _event(self, choices: list[dict], **extra) -> str:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}
        return sse({**body, "choices": choices, **extra})

    def delta(self, delta: dict, finish_reason: str | None = None, **extra) -> str:
        return self._event([{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}], **extra)

    def role(self, alignment: Alignment | None) -> str:
        """The first chunk: the assistant role and the gate's decision (made at prefill, before any text)."""
        return self.delta({"role": "assistant", "content": ""}, alignment=_alignment(alignment))

    def usage(self, prompt_tokens: int, completion_tokens: int) -> str:
        """The ``stream_options.include_usage`` chunk: no choices, the token counts."""
        return self._event([], usage=usage(prompt_tokens, completion_tokens))


async def collect(job: Job, model: str) -> dict:
    """Await the whole answer of ``job``; a :class:`Failed` job raises its :class:`APIError`."""
    alignment, pieces, prompt_tokens = None, [], job.prompt_tokens
    while True:
        event = await job.next_event()
        if isinstance(event, Started):
            alignment, prompt_tokens = event.alignment, event.prompt_tokens
        elif isinstance(event, Text):
            pieces.append(event.piece)
        elif isinstance(event, Failed):
            raise event.error
        elif isinstance(event, Finished):
            return completion_body(
                model, "".join(pieces), event.reason, prompt_tokens, event.completion_tokens, alignment
            )


async def stream(job: Job, model: str, include_usage: bool) -> AsyncIterator[str]:
    """The answer of ``job`` as server-sent events; a failure is an error event. A client gone early cancels it."""
    chunks = ChunkEncoder(model)
    finished = False
    try:
        while True:
            event = await job.next_event()
            if isinstance(event, Started):
                yield chunks.role(event.alignment)
            elif isinstance(event, Text):
                yield chunks.delta({"content": event.piece})
            elif isinstance(event, Failed):
                yield sse(event.error.body())
                break
            elif isinstance(event, Finished):
                yield chunks.delta({}, event.reason)
                if include_usage:
                    yield chunks.usage(job.prompt_tokens, event.completion_tokens)
                break
        finished = True
        yield SSE_DONE
    finally:
        if not finished:  # the client went away: free its row in the batch
            job.cancel()
