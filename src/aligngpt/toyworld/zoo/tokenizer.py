"""A byte-level BPE tokenizer for the toy world, wrapped as a ``PreTrainedTokenizerFast``.

Byte-level BPE never needs ``<unk>`` (every byte is in the alphabet), decodes back to the exact input text
(newlines included) and gives character offsets. Special tokens and their ids::

    <pad> = 0, <unk> = 1, <s> = 2 (BOS), </s> = 3 (EOS)

EOS is deliberately not id 2: transformers' CLIP text model treats ``eos_token_id == 2`` as a legacy config and
pools at the *largest* token id instead of the first EOS.

Two post-processing variants share one vocabulary: the LM tokenizer prepends ``<s>`` (like LLaMA), the CLIP
tokenizer wraps text as ``<s> ... </s>`` so CLIP's text pooling (first EOS position) sees the whole caption.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)  # ids 0..3 in this order


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE on ``texts`` (deterministic for the same texts and size)."""
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    for position, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != position:
            raise RuntimeError(f"special token {token!r} got id {tokenizer.token_to_id(token)}, expected {position}")
    return tokenizer


def wrap(tokenizer: Tokenizer, add_eos: bool, model_max_length: int) -> PreTrainedTokenizerFast:
    """A transformers tokenizer around a copy of ``tokenizer``; ``add_eos`` appends ``</s>`` (CLIP variant)."""
    inner = Tokenizer.from_str(tokenizer.to_str())
    bos_id, eos_id = inner.token_to_id(BOS), inner.token_to_id(EOS)
    single = f"{BOS} $A {EOS}" if add_eos else f"{BOS} $A"
    pair = f"{BOS} $A {EOS} $B:1 {EOS}:1" if add_eos else f"{BOS} $A $B:1"
    inner.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(BOS, bos_id), (EOS, eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=inner,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        padding_side="right",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
