"""Common interface of the semantic tokenizers (OPMQ, RQ-VAE, OPQ).

``encode(emb: Tensor[N, d]) -> codes LongTensor[N, K]`` with values in ``[0, C)``;
``decode(codes) -> Tensor[N, d]``; ``num_sids`` = K, ``codebook_size`` = C, ``input_dim`` = d.
State is saved/loaded with ``state_dict()`` / ``load_state_dict()``.

OOV convention (implemented by the SID-table loader): an item id missing from the SID table gets
SID ``C`` in every position, so each ``sid_k`` feature has ``vocab_size = C + 1``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from store_rec.errors import UserError


def check_embeddings(emb: Tensor, input_dim: int, *, where: str = "embeddings") -> None:
    """Raise UserError for a wrong shape/width or non-finite values (names the first bad row)."""
    if emb.dim() != 2:
        raise UserError(f"{where}: expected Tensor[N, d], got shape {tuple(emb.shape)}")
    if emb.shape[1] != input_dim:
        raise UserError(f"{where}: embedding dimension {emb.shape[1]} != tokenizer input_dim {input_dim}")
    bad = ~torch.isfinite(emb).all(1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0])
        raise UserError(f"{where}: row {row} has NaN/inf values ({int(bad.sum())} bad rows)")


class SemanticTokenizer(nn.Module):
    """Base class; subclasses set ``input_dim``, ``num_sids``, ``codebook_size`` and implement
    ``_encode`` / ``decode``."""

    input_dim: int
    num_sids: int
    codebook_size: int

    def _encode(self, emb: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, codes: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def encode(self, emb: Tensor, *, batch_size: int = 262144) -> Tensor:
        """``emb: Tensor[N, d]`` -> ``LongTensor[N, K]`` (validated: width d, all finite)."""
        check_embeddings(emb, self.input_dim)
        emb = emb.float()
        if emb.shape[0] <= batch_size:
            return self._encode(emb)
        return torch.cat([self._encode(emb[i:i + batch_size]) for i in range(0, emb.shape[0], batch_size)])

    @property
    def tuple_space(self) -> float:
        """``C ** K``, number of distinct SID tuples."""
        return math.pow(self.codebook_size, self.num_sids)
