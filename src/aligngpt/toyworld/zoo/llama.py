"""A tiny LLaMA pre-trained on the toy world's text (Vicuna-v1 chats and caption lines)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from aligngpt.modeling.aligngpt import IGNORE_INDEX
from aligngpt.toyworld.zoo.training import cosine_with_warmup

MAX_GRAD_NORM = 1.0
EVAL_BATCH = 64


@dataclass(frozen=True)
class LlamaSettings:
    """Architecture and training settings of the tiny LLaMA."""

    steps: int = 200
    batch_size: int = 32  # packed rows of ``context`` tokens
    context: int = 128
    pool_size: int = 8192  # distinct training texts (re-used across steps)
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup: int = 20
    hidden: int = 128
    intermediate: int = 352
    layers: int = 3
    heads: int = 4
    max_positions: int = 1024
    heldout_texts: int = 256


def build_llama(settings: LlamaSettings, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden,
        intermediate_size=settings.intermediate,
        num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads,
        num_key_value_heads=settings.heads,
        max_position_embeddings=settings.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def encode_texts(tokenizer: PreTrainedTokenizerFast, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids per text (BOS first; ``</s>`` inside the text is the EOS token)."""
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


def batch_tensors(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (pad positions = -100), each (B, T)."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    return ids, mask, labels


def pack(sequences: list[list[int]], context: int) -> torch.Tensor:
    """Concatenate ``sequences`` and cut into rows of ``context`` tokens (N, context); the tail is dropped.

    Packing wastes no compute on padding; each text still starts with ``<s>``, so boundaries stay visible.
    """
    flat = torch.tensor([token for seq in sequences for token in seq], dtype=torch.long)
    rows = len(flat) // context
    if rows == 0:
        raise ValueError(f"{len(flat)} tokens are too few for one packed row of {context}")
    return flat[: rows * context].view(rows, context)


def train_llama(
    model: LlamaForCausalLM,
    sequences: list[list[int]],
    settings: LlamaSettings,
    seed: int,
    progress: bool = True,
) -> list[float]:
    """Next-token training on ``sequences`` packed into rows of ``settings.context``; returns per-step losses."""
    rows = pack(sequences, settings.context)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = cosine_with_warmup(optimizer, settings.warmup, settings.steps)
    model.train()
    losses = []
    bar = tqdm(range(settings.steps), desc="train LLaMA", disable=not progress)
    for _ in bar:
        ids = rows[torch.randperm(len(rows), generator=generator)[: settings.batch_size]]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


@torch.no_grad()
def heldout_loss(model: LlamaForCausalLM, sequences: list[list[int]], pad_id: int) -> dict[str, float]:
    """Mean next-token cross-entropy per predicted token on held-out ``sequences`` (and its perplexity)."""
    total, count = 0.0, 0
    for start in range(0, len(sequences), EVAL_BATCH):
        ids, mask, labels = batch_tensors(sequences[start : start + EVAL_BATCH], pad_id)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        targets = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        total += float(loss)
        count += int((targets != IGNORE_INDEX).sum())
    mean = total / count
    return {"heldout_loss": mean, "heldout_perplexity": math.exp(mean), "heldout_tokens": count}
