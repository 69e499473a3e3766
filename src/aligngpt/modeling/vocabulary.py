"""The vocabulary rows of the marker tokens (``<image>``, ``<alignment>``): growing a language model's tables for them
and their deterministic starting values."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

_MARKER_ROW_SEED = 0


def grow_vocabulary(causal_lm: PreTrainedModel, vocab_size: int) -> None:
    """Give ``causal_lm``'s input embeddings and LM head ``vocab_size`` rows (in place; tied tables stay tied).

    The new rows (the marker tokens) get :func:`init_marker_rows`; no global random state is used, so building a model
    stays reproducible under ``torch.manual_seed``. Nothing happens when the tables are large enough already.
    """
    embeddings, head = causal_lm.get_input_embeddings(), causal_lm.get_output_embeddings()
    old_rows = embeddings.weight.shape[0]
    if old_rows >= vocab_size:
        return
    tied = head is not None and head.weight is embeddings.weight
    extra = vocab_size - old_rows

    def grown(weight: torch.Tensor) -> nn.Parameter:
        rows = weight.new_zeros(extra, weight.shape[1])
        return nn.Parameter(torch.cat([weight.detach(), rows]), requires_grad=weight.requires_grad)

    embeddings.weight = grown(embeddings.weight)
    embeddings.num_embeddings = vocab_size
    if head is not None:
        head.weight = embeddings.weight if tied else grown(head.weight)
        head.out_features = vocab_size
    init_marker_rows(embeddings.weight, None if head is None else head.weight, old_rows)
    causal_lm.config.vocab_size = vocab_size


def init_marker_rows(embeddings: torch.Tensor, lm_head: torch.Tensor | None, first_new_row: int) -> None:
    """Deterministic values for the vocabulary rows from ``first_new_row`` on (the marker tokens), in place.

    Input rows: the mean of the old rows plus seeded noise of their per-dimension spread (distinct rows, so that
    markers can be found in ``inputs_embeds``); LM-head rows: zeros (their logits are masked anyway).

    Args:
        embeddings: ``[V_new, d]`` input embedding table. lm_head: ``[V_new, d]`` output table (may be the same).
    """
    with torch.no_grad():
        old = embeddings[:first_new_row].float()
        count = embeddings.shape[0] - first_new_row
        generator = torch.Generator().manual_seed(_MARKER_ROW_SEED)
        noise = torch.randn(count, embeddings.shape[1], generator=generator)
        rows = old.mean(0) + noise * old.std(0)
        if lm_head is not None and lm_head.data_ptr() != embeddings.data_ptr():
            lm_head[first_new_row:] = 0
        embeddings[first_new_row:] = rows.to(embeddings.dtype)
