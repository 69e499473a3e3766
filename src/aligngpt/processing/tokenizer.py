"""Tokenizer loading and the legacy-SentencePiece behaviour the official (transformers 4.31) LLaMA tokenizer had."""

from __future__ import annotations

from pathlib import Path

from tokenizers import normalizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase

SPIECE_UNDERLINE = "\u2581"


def _uses_metaspace_prepend(tokenizer: PreTrainedTokenizerBase) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.pre_tokenizer is None:
        return False
    state = backend.pre_tokenizer.__getstate__()
    text = state.decode() if isinstance(state, bytes) else str(state)
    return '"Metaspace"' in text and '"always"' in text


def apply_legacy_sentencepiece(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Make a LLaMA SentencePiece tokenizer prepend its dummy-prefix space to every text piece, as legacy mode did.

    Current ``Metaspace(prepend_scheme="always")`` skips the prefix when a piece already starts with a space, so
    ``" and"`` becomes ``["▁and"]`` instead of legacy SentencePiece's ``["▁", "▁and"]``. The official ids (and the
    released checkpoints' training data) use the legacy form. Tokenizers without that pre-tokenizer are untouched.
    """
    if not getattr(tokenizer, "legacy", False) or not _uses_metaspace_prepend(tokenizer):
        return tokenizer
    backend = tokenizer.backend_tokenizer
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend(SPIECE_UNDERLINE), normalizers.Replace(" ", SPIECE_UNDERLINE)]
    )
    backend.pre_tokenizer = None
    return tokenizer


def load_tokenizer(path: str | Path, **kwargs) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained`` plus the legacy SentencePiece fix; a pad token is guaranteed.

    Without a pad token the unk token is used (as the official training did: id 0 for LLaMA), else EOS.
    """
    tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
    if not tokenizer.is_fast:
        raise ValueError(f"{path}: aligngpt needs a fast (tokenizers-backed) tokenizer for offsets")
    apply_legacy_sentencepiece(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    return tokenizer
