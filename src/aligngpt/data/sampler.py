"""Modality-length-grouped sampling (docs/data.md) with a strict single-modality guarantee per micro-batch.

Lengths follow the official convention: whitespace word count of all turns, positive for image records and
negative for text-only ones (``modality_lengths``). The sampler yields a global index order; consecutive runs
of ``per_device_batch`` indices are the micro-batches that the (sharded) batch sampler deals to the devices.

Order for one epoch (all randomness from ``numpy.random.default_rng([seed, epoch])``):

1. Image and text indices are each permuted and cut into mega-batches of ``per_device_batch × world_size ×
   grad_accum`` (one optimizer step over all devices). With ``length_group_steps = K > 1`` every run of ``K``
   mega-batches of the permutation is first sorted by length (descending), so the samples of one step have
   similar lengths and batches carry little padding (an option of ours; ``K = 1`` is the official order).
2. Inside a full mega-batch, indices are sorted by length (descending, stable) and cut into ``grad_accum``
   accumulation rounds of ``world_size × per_device_batch`` consecutive indices (the longest samples in the
   first round). Each round is dealt greedily into ``world_size`` micro-batches of exactly ``per_device_batch``
   items, each next index going to the micro-batch with the smallest total length so far, so the devices that
   run a round together carry balanced work, and the rounds one device accumulates carry little padding. The
   step's set of samples, and with the loss normalised by the step's supervised-token count its gradient, is
   the same as without the split.
3. The full mega-batches of both modalities are shuffled together.
4. Each modality's incomplete last mega-batch is sorted by length and cut into micro-batches; its full
   micro-batches follow (images, then text), and finally the two remainders (< ``per_device_batch`` each):
   image remainder, then text remainder.

Guarantee: every micro-batch is single-modality except at most one, the one holding both remainders. It is the
last micro-batch when ``r_image + r_text <= per_device_batch``; otherwise it is the second-to-last and the
last is text-only. (Making it always the last is impossible: the counts per modality fix the remainders.) This
differs from the official sampler, whose tail of concatenated leftovers, sorted by dataset index, can mix
several micro-batches.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from aligngpt.data.records import Record, RecordFile


def word_count_length(record: Record | Mapping[str, Any]) -> int:
    """Signed length of one record: ``+words`` for image records, ``-words`` for text-only (never 0).

    ``words`` is the whitespace word count of all turns, at least 1 (the official code would drop 0-length
    records from the sampler altogether).
    """
    if isinstance(record, Record):
        values = [m.value for m in record.conversations]
        has_image = record.has_image
    else:
        turns = record.get("conversations") or []
        values = [t.get("value") for t in turns if isinstance(t, Mapping)]
        has_image = record.get("image") is not None
    words = max(1, sum(len(v.split()) for v in values if isinstance(v, str)))
    return words if has_image else -words


def modality_lengths(records: RecordFile | Iterable[Record | Mapping[str, Any]]) -> list[int]:
    """``word_count_length`` of every record, in order (one pass; a ``RecordFile`` is read raw, so a malformed
    record gets a length instead of raising)."""
    if isinstance(records, RecordFile):
        return [
            word_count_length(obj if isinstance(obj := records.raw(i), Mapping) else {}) for i in range(len(records))
        ]
    return [word_count_length(r) for r in records]


class ModalityLengthGroupedSampler(Sampler[int]):
    """Deterministic (seed, epoch) sampler of single-modality micro-batches (see the module docstring)."""

    def __init__(
        self,
        lengths: Sequence[int],
        per_device_batch: int,
        *,
        world_size: int = 1,
        grad_accum: int = 1,
        seed: int = 0,
        length_group_steps: int = 1,
    ):
        if per_device_batch < 1 or world_size < 1 or grad_accum < 1 or length_group_steps < 1:
            raise ValueError("per_device_batch, world_size, grad_accum and length_group_steps must all be >= 1")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if self.lengths.ndim != 1:
            raise ValueError("lengths must be a flat sequence of ints")
        zero = np.flatnonzero(self.lengths == 0)
        if zero.size:
            raise ValueError(f"length 0 at index {int(zero[0])}: lengths must be > 0 (image) or < 0 (text-only)")
        self.per_device_batch = per_device_batch
        self.world_size = world_size
        self.groups_per_step = world_size * grad_accum
        self.length_group_steps = length_group_steps
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (the order changes per epoch, identically on every rank)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return int(self.lengths.size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order().tolist())

    def order(self) -> np.ndarray:
        """The index order for the current epoch, ``[len(self)]`` int64."""
        rng = np.random.default_rng([self.seed, self.epoch])
        mega = self.per_device_batch * self.groups_per_step
        megabatches: list[np.ndarray] = []
        tails: list[tuple[list[np.ndarray], np.ndarray]] = []
        for indices in (np.flatnonzero(self.lengths > 0), np.flatnonzero(self.lengths < 0)):
            perm = self._group_by_length(rng.permutation(indices), mega * self.length_group_steps)
            n_full = perm.size // mega
            megabatches += [self._balance(perm[k * mega : (k + 1) * mega]) for k in range(n_full)]
            tails.append(self._split_leftover(perm[n_full * mega :]))
        pieces = [megabatches[k] for k in rng.permutation(len(megabatches))]
        pieces += [mb for full, _ in tails for mb in full]
        pieces += [rest for _, rest in tails]
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)

    def _group_by_length(self, perm: np.ndarray, span: int) -> np.ndarray:
        """Sort every run of ``span`` indices of ``perm`` by length (a no-op for one-step runs)."""
        if self.length_group_steps == 1:
            return perm
        return np.concatenate([self._by_length_desc(perm[k : k + span]) for k in range(0, perm.size, span)] or [perm])

    def _by_length_desc(self, indices: np.ndarray) -> np.ndarray:
        return indices[np.argsort(-np.abs(self.lengths[indices]), kind="stable")]

    def _balance(self, megabatch: np.ndarray) -> np.ndarray:
        """Cut a full mega-batch into length-sorted accumulation rounds, each dealt into ``world_size``
        equal-count micro-batches with balanced total length (greedy)."""
        size, devices = self.per_device_batch, self.world_size
        ordered = self._by_length_desc(megabatch)
        rounds = []
        for start in range(0, ordered.size, size * devices):
            chunks: list[list[int]] = [[] for _ in range(devices)]
            heap = [(0, d) for d in range(devices)]  # (total length, micro-batch id) of micro-batches not yet full
            for index in ordered[start : start + size * devices].tolist():
                total, d = heapq.heappop(heap)
                chunks[d].append(index)
                if len(chunks[d]) < size:
                    heapq.heappush(heap, (total + abs(int(self.lengths[index])), d))
            rounds += [i for chunk in chunks for i in chunk]
        return np.asarray(rounds, dtype=np.int64)

    def _split_leftover(self, leftover: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        ordered = self._by_length_desc(leftover)
        n_full = ordered.size // self.per_device_batch * self.per_device_batch
        full = [ordered[k : k + self.per_device_batch] for k in range(0, n_full, self.per_device_batch)]
        return full, ordered[n_full:]
