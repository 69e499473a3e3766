"""GPT judge client for LLaVA-Bench, MM-Vet and the MMBench choice extractor.

Any OpenAI-compatible ``/chat/completions`` endpoint works (``base_url`` such as ``https://api.openai.com/v1``
or a local server); the key comes from ``OPENAI_API_KEY``. Replies are cached on disk, one JSON file per
request hash (model, messages, temperature, max_tokens), so a rerun never asks the same question twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aligngpt.errors import UserError
from aligngpt.fileio import write_json_atomic

API_KEY_ENV = "OPENAI_API_KEY"
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MAX_RETRIES = 5
RETRY_BASE_DELAY_S = 2.0
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class JudgeError(UserError, RuntimeError):
    """The judge endpoint could not answer (after retries) or answered in an unexpected format."""


@dataclass(frozen=True)
class JudgeRequest:
    """One chat-completion request; ``model`` is the benchmark's official judge model."""

    model: str
    messages: tuple[tuple[str, str], ...]  # (role, content) pairs
    temperature: float
    max_tokens: int
    nonce: int = 0  # not sent; tells repeated identical requests apart in the cache (MM-Vet run k, MMBench try k)

    @classmethod
    def user(
        cls, model: str, content: str, temperature: float, max_tokens: int, system: str | None = None, nonce: int = 0
    ):
        messages = ((("system", system),) if system is not None else ()) + (("user", content),)
        return cls(model=model, messages=messages, temperature=temperature, max_tokens=max_tokens, nonce=nonce)

    def messages_json(self) -> list[dict]:
        return [{"role": role, "content": content} for role, content in self.messages]

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "messages": self.messages_json(),
        }

    def cache_key(self) -> str:
        keyed = self.as_dict() | ({"nonce": self.nonce} if self.nonce else {})
        return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode("utf-8")).hexdigest()


class Judge(Protocol):
    """Anything that answers a :class:`JudgeRequest` with the reply text."""

    def complete(self, request: JudgeRequest) -> str: ...


class OpenAIJudge:
    """Client for an OpenAI-compatible chat-completions endpoint (uses ``httpx``).

    Args:
        base_url: endpoint root; ``/chat/completions`` is appended.
        model: judge model; ``None`` keeps each benchmark's official judge model (e.g. ``gpt-4-0314``).
        api_key: defaults to ``$OPENAI_API_KEY`` (may be empty for local servers).
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self._client = None  # one connection pool for all requests, created on first use

    def complete(self, request: JudgeRequest) -> str:
        import httpx

        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout_s)

        payload = request.as_dict()
        if self.model is not None:
            payload["model"] = self.model
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        last_error = ""
        for attempt in range(self.max_retries + 1):
            try:
                response = self._client.post(self.url, json=payload, headers=headers)
            except httpx.HTTPError as err:
                last_error = f"{type(err).__name__}: {err}"
            else:
                if response.status_code == 200:
                    return _reply_text(response, self.url)
                last_error = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code not in RETRYABLE_STATUS:
                    break
            if attempt < self.max_retries:
                time.sleep(RETRY_BASE_DELAY_S * 2**attempt)
        raise JudgeError(f"judge at {self.url} failed: {last_error}")


def _reply_text(response, url: str) -> str:
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise JudgeError(f"judge at {url} sent an unexpected reply: {response.text[:300]}") from err
    if not isinstance(content, str):
        raise JudgeError(f"judge at {url} sent non-text content: {content!r}")
    return content


class CachedJudge:
    """Wraps a judge with an on-disk cache (``cache_dir/<sha256>.json``); ``inner=None`` means cache-only."""

    def __init__(self, inner: Judge | None, cache_dir: Path) -> None:
        self.inner = inner
        self.cache_dir = Path(cache_dir)
        self.calls = 0  # requests that actually reached the inner judge

    def complete(self, request: JudgeRequest) -> str:
        path = self.cache_dir / f"{request.cache_key()}.json"
        if path.exists():
            with open(path, encoding="utf-8") as f:
                return json.load(f)["reply"]
        if self.inner is None:
            raise JudgeError(
                "a GPT judge is needed (no cached reply for this request); pass --judge-base-url/--judge-model"
            )
        reply = self.inner.complete(request)
        self.calls += 1
        write_json_atomic(path, {"request": request.as_dict(), "reply": reply})
        return reply


class RecordingJudge:
    """Wraps a judge and keeps every (request, reply) in order, for ``judge_requests.jsonl``."""

    def __init__(self, inner: Judge) -> None:
        self.inner = inner
        self.log: list[tuple[JudgeRequest, str]] = []

    def complete(self, request: JudgeRequest) -> str:
        reply = self.inner.complete(request)
        self.log.append((request, reply))
        return reply

    def records(self) -> list[dict]:
        return [{**request.as_dict(), "reply": reply} for request, reply in self.log]
