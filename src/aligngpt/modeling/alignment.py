"""The alignment module: the level table ``E`` (N x d), the gate network and the combination modes."""

from __future__ import annotations

import torch
from torch import nn

from aligngpt.config import AlignGPTConfig


class AlignmentModule(nn.Module):
    """Computes the alignment embedding ``a`` placed right after BOS.

    * stage 1 (levels given): ``a = E[level]``
    * ``adaptive`` (paper): ``a = E[N-1] + sum_i alpha_i E[i]`` with ``alpha = softmax(gate(s))`` over ``N-1`` levels
    * ``local``: ``a = sum_i alpha_i E[i]``; ``global``: ``a = E[N-1]``;
      ``uniform``: ``a = mean(E[0..N-2]) + E[N-1]``; ``fixed:k``: ``a = E[k]``

    ``s_k = <V_k, mean text embedding>`` for each of the ``num_image_tokens`` projected image tokens ``V``.
    """

    def __init__(self, config: AlignGPTConfig):
        super().__init__()
        self.config = config
        levels = config.num_alignment_levels
        self.level_embeddings = nn.Parameter(torch.empty(levels, config.text_config.hidden_size))
        self.gate = nn.Sequential(
            nn.Linear(config.num_image_tokens, config.gate_hidden_size),
            nn.GELU(),
            nn.Linear(config.gate_hidden_size, levels - 1),
        )

    def reset_level_embeddings(self) -> None:
        """Xavier-uniform over the N x d table, as the official initialisation."""
        nn.init.xavier_uniform_(self.level_embeddings)

    def gate_weights(self, image_features: torch.Tensor, text_mean: torch.Tensor) -> torch.Tensor:
        """Softmax gate weights.

        Args:
            image_features: ``[n, num_image_tokens, d]`` projected image tokens.
            text_mean: ``[n, d]`` mean text embedding of each sample.

        Returns:
            ``[n, N-1]`` weights that sum to one.
        """
        scores = (image_features * text_mean.unsqueeze(1)).sum(-1)
        return torch.softmax(self.gate(scores), dim=-1)

    def forward(
        self,
        image_features: torch.Tensor,
        text_mean: torch.Tensor,
        levels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Alignment embeddings for ``n`` image samples.

        Args:
            image_features: ``[n, num_image_tokens, d]``.
            text_mean: ``[n, d]``.
            levels: optional ``[n]`` level ids in ``0..N-1``; when given ``a = E[level]`` (stage 1, or a forced level).

        Returns:
            ``(a, alpha)``: ``a`` is ``[n, d]``; ``alpha`` is ``[n, N-1]``, or ``None`` when the mode has no gate.
        """
        table = self.level_embeddings
        n = image_features.shape[0]
        if levels is not None:
            if levels.numel() and (levels.min() < 0 or levels.max() >= table.shape[0]):
                raise ValueError(f"alignment level ids must lie in 0..{table.shape[0] - 1}, got {levels.tolist()}")
            return table[levels], None
        mode = self.config.alignment
        global_row, local_rows = table[-1], table[:-1]
        if mode.kind == "fixed":
            return table[mode.fixed_level].expand(n, -1), None
        if mode.kind == "global":
            return global_row.expand(n, -1), None
        if mode.kind == "uniform":
            return (local_rows.mean(0) + global_row).expand(n, -1), None
        if mode.uses_gate:
            alpha = self.gate_weights(image_features, text_mean)
            mixed = alpha @ local_rows
            return (mixed + global_row if mode.kind == "adaptive" else mixed), alpha
        raise ValueError(f"alignment_mode {str(mode)!r} has no alignment embedding")
