"""Token-specific feed-forward network (RankMixer / OneTrans style per-token parameters).

STORE's tokens are heterogeneous: a dense token, SID tokens, raw-ID tokens and static tokens each
live in their own feature subspace. A shared FFN applies one map to all of them; RankMixer
(arXiv 2507.15551) and OneTrans (arXiv 2510.26104) give every non-sequential token its own FFN.
All of STORE's tokens are non-sequential (there is no behaviour sequence in the token list), so
every position ``l`` gets its own weights::

    FFN_l(x_l) = W2_l GELU(W1_l x_l + b1_l) + b2_l      W1_l: [D, H], W2_l: [H, D]

computed for all positions at once with two batched matmuls (``einsum``). With every ``W_l``
equal it is the shared ``Linear(D, H) -> GELU -> Linear(H, D)`` (tested). Parameters: ``L (2DH +
H + D)`` instead of ``2DH + H + D``.

Shapes::

    forward(x: Tensor[B, L, D]) -> Tensor[B, L, D]
"""

from __future__ import annotations

import math

import torch
from torch import nn


class TokenFFN(nn.Module):
    """Per-position FFN over ``num_tokens`` positions (see module docstring)."""

    def __init__(self, num_tokens: int, embedding_dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        L, D, H = int(num_tokens), int(embedding_dim), int(hidden_dim)
        if L < 1 or D < 1 or H < 1:
            raise ValueError(f"TokenFFN: num_tokens, embedding_dim, hidden_dim must be >= 1, got {L}, {D}, {H}")
        self.num_tokens, self.embedding_dim, self.hidden_dim = L, D, H
        self.w1 = nn.Parameter(torch.empty(L, D, H))
        self.b1 = nn.Parameter(torch.empty(L, H))
        self.w2 = nn.Parameter(torch.empty(L, H, D))
        self.b2 = nn.Parameter(torch.empty(L, D))
        self.drop = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Linear``'s default init, per position (uniform, bound ``1/sqrt(fan_in)``)."""
        for w, b, fan_in in ((self.w1, self.b1, self.embedding_dim), (self.w2, self.b2, self.hidden_dim)):
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    @torch.no_grad()
    def load_shared(self, ffn: nn.Sequential) -> None:
        """Copy a shared ``Sequential(Linear(D, H), act, [Dropout,] Linear(H, D))`` into every position."""
        lins = [m for m in ffn if isinstance(m, nn.Linear)]
        self.w1.copy_(lins[0].weight.t().expand_as(self.w1))
        self.b1.copy_(lins[0].bias.expand_as(self.b1))
        self.w2.copy_(lins[1].weight.t().expand_as(self.w2))
        self.b2.copy_(lins[1].bias.expand_as(self.b2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.einsum("bld,ldh->blh", x, self.w1) + self.b1
        h = self.drop(nn.functional.gelu(h))
        return torch.einsum("blh,lhd->bld", h, self.w2) + self.b2
