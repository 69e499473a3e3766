"""Tokenisation as aligngpt's processor does it, for vLLM's ``tokenizer_mode="aligngpt"``.

aligngpt tokenises the text around ``<image>`` chunk by chunk (each chunk on its own, one BOS in front), which is
what the official code and the released checkpoints' training data did; a whole-string encode can differ at the
chunk boundaries (e.g. a SentencePiece word-start piece after the image). It also applies the legacy-SentencePiece
fix of ``aligngpt.processing.tokenizer`` at load time, and puts one BOS in front of a rendered chat template, as the
processor does. This mode makes vLLM's prompts (plain prompts and rendered chat templates) get exactly aligngpt's
ids.
"""

from __future__ import annotations

from tokenizers import normalizers
from transformers import BatchEncoding
from vllm.tokenizers.hf import CachedHfTokenizer

IMAGE_TOKEN = "<image>"
TOKENIZER_MODE = "aligngpt"
SPIECE_UNDERLINE = "\u2581"


def _uses_metaspace_prepend(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.pre_tokenizer is None:
        return False
    state = backend.pre_tokenizer.__getstate__()
    text = state.decode() if isinstance(state, bytes) else str(state)
    return '"Metaspace"' in text and '"always"' in text


def apply_legacy_sentencepiece(tokenizer) -> None:
    """Prepend SentencePiece's dummy-prefix space to every text piece, as legacy mode did (aligngpt's load-time
    fix, in place); tokenizers that are not legacy LLaMA SentencePiece ones are untouched."""
    if not getattr(tokenizer, "legacy", False) or not _uses_metaspace_prepend(tokenizer):
        return
    backend = tokenizer.backend_tokenizer
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend(SPIECE_UNDERLINE), normalizers.Replace(" ", SPIECE_UNDERLINE)]
    )
    backend.pre_tokenizer = None


def _bos_id(tokenizer) -> int | None:
    """The BOS id when the tokenizer puts one in front of a text (LLaMA yes, Qwen2 no)."""
    probe = tokenizer.encode("a", add_special_tokens=True)
    bos = tokenizer.bos_token_id
    return bos if probe and bos is not None and probe[0] == bos else None


def chunkwise_ids(tokenizer, text: str, add_special_tokens: bool, bos_id: int | None, image_id: int) -> list[int]:
    """aligngpt's ids of ``text``: ``[BOS]`` (when asked for, or when ``text`` starts with the BOS string), then each
    chunk between ``<image>`` markers encoded on its own, one ``image_id`` between chunks; never an EOS."""
    bos_text = tokenizer.bos_token
    if bos_id is not None and bos_text and text.startswith(bos_text):
        text, add_special_tokens = text[len(bos_text) :], True
    ids = [bos_id] if add_special_tokens and bos_id is not None else []
    for index, chunk in enumerate(text.split(IMAGE_TOKEN)):
        if index:
            ids.append(image_id)
        if chunk:
            ids.extend(tokenizer.encode(chunk, add_special_tokens=False))
    return ids


def make_chunkwise(tokenizer, load_args: tuple):
    """``tokenizer`` (vLLM's cached HF tokenizer, loaded by ``CachedHfTokenizer.from_pretrained(*load_args[0],
    **load_args[1])``; pickling loads it again that way) with ``encode`` / ``__call__`` of one string giving
    :func:`chunkwise_ids`; everything else unchanged."""
    apply_legacy_sentencepiece(tokenizer)
    base_cls = tokenizer.__class__
    bos_id = _bos_id(tokenizer)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    plain = base_cls.encode

    class AlignGPTChunkwiseTokenizer(base_cls):
        aligngpt_chunkwise = True

        def _chunkwise(self, text: str, add_special_tokens: bool) -> list[int]:
            return chunkwise_ids(_Plain(self, plain), text, add_special_tokens, bos_id, image_id)

        def encode(self, text, *args, add_special_tokens: bool = True, **kwargs):
            if isinstance(text, str) and not args and not kwargs.get("return_offsets_mapping"):
                return self._chunkwise(text, add_special_tokens)
            return plain(self, text, *args, add_special_tokens=add_special_tokens, **kwargs)

        def __call__(self, text=None, *args, add_special_tokens: bool = True, **kwargs):
            if isinstance(text, str) and not args and not kwargs.get("return_offsets_mapping"):
                ids = self._chunkwise(text, add_special_tokens)
                return BatchEncoding({"input_ids": ids, "attention_mask": [1] * len(ids)})
            return super().__call__(text, *args, add_special_tokens=add_special_tokens, **kwargs)

        def apply_chat_template(self, conversation, *args, tokenize: bool = True, return_dict: bool = True, **kwargs):
            """The template's text with one BOS in front, as aligngpt's processor tokenises a rendered chat
            (aligngpt's templates emit none); tokenised chunk by chunk."""
            text = super().apply_chat_template(conversation, *args, tokenize=False, **kwargs)
            if not isinstance(text, str):  # a batch of conversations
                return super().apply_chat_template(
                    conversation, *args, tokenize=tokenize, return_dict=return_dict, **kwargs
                )
            bos_text = self.bos_token
            if bos_id is not None and bos_text and not text.startswith(bos_text):
                text = bos_text + text
            if not tokenize:
                return text
            ids = self._chunkwise(text, add_special_tokens=False)
            return BatchEncoding({"input_ids": ids, "attention_mask": [1] * len(ids)}) if return_dict else ids

        def __reduce__(self):
            return _load, load_args

    tokenizer.__class__ = AlignGPTChunkwiseTokenizer
    return tokenizer


class _Plain:
    """The tokenizer with its original ``encode`` (used for the chunks themselves)."""

    def __init__(self, tokenizer, encode):
        self._tokenizer, self._encode = tokenizer, encode
        self.bos_token = tokenizer.bos_token

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return self._encode(self._tokenizer, text, add_special_tokens=add_special_tokens)


def _load(args: tuple, kwargs: dict):
    return make_chunkwise(CachedHfTokenizer.from_pretrained(*args, **kwargs), (args, kwargs))


class AlignGPTTokenizer(CachedHfTokenizer):
    """vLLM tokenizer class of ``tokenizer_mode="aligngpt"``: the HF tokenizer of the folder, tokenising as
    aligngpt's processor."""

    @classmethod
    def from_pretrained(cls, path_or_repo_id, *args, **kwargs):
        return _load((path_or_repo_id, *args), kwargs)
