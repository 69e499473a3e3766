"""Tokenizer loading and the legacy-SentencePiece behaviour the official (transformers 4.31) LLaMA tokenizer had."""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, normalizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from aligngpt.prompts import IMAGE_TOKEN

SPIECE_UNDERLINE = "\u2581"
# The added special token whose id marks the alignment slot in ``input_ids`` (the image's: prompts.IMAGE_TOKEN).
ALIGNMENT_TOKEN = "<alignment>"


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


def add_marker_tokens(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """Add ``<image>`` and ``<alignment>`` as special tokens unless present; returns their ids (image, alignment).

    New tokens get the ids after the tokenizer's vocabulary, which is where :class:`~aligngpt.config.AlignGPTConfig`
    places its markers by default when the LLM's vocabulary has the tokenizer's size.
    """
    missing = [token for token in (IMAGE_TOKEN, ALIGNMENT_TOKEN) if token not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": [AddedToken(token, special=True, normalized=False) for token in missing]},
            replace_extra_special_tokens=False,
        )
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), tokenizer.convert_tokens_to_ids(ALIGNMENT_TOKEN)


def check_marker_tokens(tokenizer: PreTrainedTokenizerBase, image_token_id: int, alignment_token_id: int) -> None:
    """Make ``tokenizer`` hold the marker tokens at a model's marker ids (adding them if absent).

    Legacy negative ids have no tokens and are left alone. Raises ``ValueError`` when the tokenizer gives other ids.
    """
    if image_token_id < 0 and alignment_token_id < 0:
        return
    got = add_marker_tokens(tokenizer)
    if got != (image_token_id, alignment_token_id):
        raise ValueError(
            f"the tokenizer has {IMAGE_TOKEN} / {ALIGNMENT_TOKEN} at ids {got[0]} / {got[1]}, but the model config "
            f"uses {image_token_id} / {alignment_token_id} (a tokenizer of {len(tokenizer)} tokens for this model?)"
        )
