"""Static-feature groups -> one token per group, without rotation (the paper's "w/o rotation").

STORE fuses every static group with a shallow MLP into the instance block ``C`` and emits ``K``
rotated copies ``O_i = C R_i`` (``store_rec.modules.rotation``). The paper's Table 2 ablation "w/o
orthogonal rotation" costs 1.760 vs 1.763 TFLOPs, i.e. it keeps the token count and drops only
the rotations. This module is that ablation: the same group MLPs, each widened to the token width
``D`` (``C`` is no longer formed), one token per group::

    g_k  : Tensor[B, n_k * D]      (group k's static embeddings, concatenated)
    T_k  = MLP_k(g_k) : Tensor[B, D]          k = 1..G

With the default ``num_rotations = G`` the rotated model and this ablation both have ``G`` static
tokens. Shapes::

    forward(static: Tensor[B, S, D]) -> Tensor[B, G, D]      S = sum(group_sizes)
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from store_rec.modules.rotation import _GroupMLP


class GroupTokens(nn.Module):
    """One D-wide token per static group (``MLP_k: n_k*D -> hidden -> D``)."""

    def __init__(self, embedding_dim: int, group_sizes: Sequence[int], *, mlp_hidden: int = 32) -> None:
        super().__init__()
        if not group_sizes or any(int(n) < 1 for n in group_sizes):
            raise ValueError(f"group_sizes must be non-empty positive counts, got {list(group_sizes)}")
        self.embedding_dim = int(embedding_dim)
        self.group_sizes = [int(n) for n in group_sizes]
        D = self.embedding_dim
        self.group_mlps = nn.ModuleList(_GroupMLP(n * D, D, mlp_hidden) for n in self.group_sizes)

    @property
    def num_tokens(self) -> int:
        return len(self.group_sizes)

    def forward(self, static: torch.Tensor) -> torch.Tensor:
        parts = torch.split(static, self.group_sizes, dim=1)
        return torch.stack([mlp(g.flatten(1)) for mlp, g in zip(self.group_mlps, parts)], dim=1)
