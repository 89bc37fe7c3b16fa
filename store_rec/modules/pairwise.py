"""Explicit pairwise interactions of tokens (DLRM's dot interaction) for STORE's head.

DLRM's interaction arch feeds the over-arch every pairwise dot product of its ``F + 1`` feature
vectors (``torchrec.models.dlrm.InteractionArch``). STORE's attention over LayerNorm-ed tokens
can learn bilinear field interactions only slowly; this module gives the head the same explicit
products of the *layer-0* tokens ``X_0`` (before any attention layer)::

    Z = X_0 X_0^T : Tensor[B, L, L]      dots = Z[:, i, j] for i < j  -> Tensor[B, L (L - 1) / 2]

in TorchRec's order (``torch.triu_indices(L, L, offset=1)``), so on ``[dense, sparse...]`` tokens
it equals the dot part of ``InteractionArch`` (tested).
"""

from __future__ import annotations

import torch
from torch import nn


class PairwiseDot(nn.Module):
    """``forward(x: Tensor[B, L, D]) -> Tensor[B, L (L - 1) / 2]`` (upper-triangular dot products)."""

    triu_i: torch.Tensor
    triu_j: torch.Tensor

    def __init__(self, num_tokens: int) -> None:
        super().__init__()
        L = int(num_tokens)
        if L < 2:
            raise ValueError(f"PairwiseDot needs >= 2 tokens, got {L}")
        self.num_tokens = L
        self.output_dim = L * (L - 1) // 2
        i, j = torch.triu_indices(L, L, offset=1)
        self.register_buffer("triu_i", i, persistent=False)
        self.register_buffer("triu_j", j, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.bmm(x, x.transpose(1, 2))
        return z[:, self.triu_i, self.triu_j]
