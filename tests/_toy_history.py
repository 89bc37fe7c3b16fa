"""A toy ranking model with an EmbeddingBagCollection *and* an EmbeddingCollection (unpooled history
tokens), for the distributed tests of history sharding (tests/test_history_sharding.py).

``logits = Linear([pooled EBC features a, b (B, 2*D)] ++ [mean over the history of h tokens + g tokens (B, D)])``
with ``h`` / ``g`` two aligned history lists (same lengths per row) looked up unpooled in the EC.
"""

from __future__ import annotations

from typing import Any, List, NamedTuple, Optional

import torch
from torch import nn
from torchrec.models.dlrm import SparseArch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from store_rec.models.ranking import RankingModel

D = 8
BAG = [EmbeddingBagConfig(name="t_a", embedding_dim=D, num_embeddings=23, feature_names=["a"]),
       EmbeddingBagConfig(name="t_b", embedding_dim=D, num_embeddings=17, feature_names=["b"])]
# rows not divisible by 2: uneven row-wise shards
SEQ = [EmbeddingConfig(name="t_h", embedding_dim=D, num_embeddings=41, feature_names=["h"]),
       EmbeddingConfig(name="t_g", embedding_dim=D, num_embeddings=9, feature_names=["g"])]
MAX_LEN = 5


class ToyBatch(NamedTuple):
    dense_features: torch.Tensor
    sparse_features: KeyedJaggedTensor
    labels: torch.Tensor


class _Arch(nn.Module):
    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.sparse_arch = SparseArch(EmbeddingBagCollection(tables=BAG, device=device))
        self.history = EmbeddingCollection(tables=SEQ, device=device)
        self.over = nn.Linear(3 * D, 1)

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.sparse_arch(sparse_features).flatten(1)  # [B, 2 * D]
        seq = self.history(sparse_features)  # {"h": JaggedTensor [sum(len), D], "g": ...}
        h, g = seq["h"], seq["g"]
        tok = h.to_padded_dense(desired_length=MAX_LEN) + g.to_padded_dense(desired_length=MAX_LEN)  # [B, L, D]
        n = h.lengths().clamp(min=1).to(tok.dtype).unsqueeze(1)
        return self.over(torch.cat([pooled, tok.sum(1) / n], dim=1))


class ToyHistoryModel(RankingModel):
    def __init__(self, device: Optional[torch.device] = None) -> None:
        super().__init__(_Arch(device or torch.device("cpu")), dense_in_features=1, const_dense=True, name="toy_history")

    @property
    def embedding_collection(self) -> EmbeddingCollection:
        return self.model.history


def toy_batch(rank: int, batch_size: int = 6, seed: int = 0) -> ToyBatch:
    """Rank ``rank``'s batch: one id of a and b per sample, 0..MAX_LEN aligned history ids of h and g
    (some rows empty: a cold user), plus an extra key the model does not read."""
    g = torch.Generator().manual_seed(seed * 1000 + rank)
    n = torch.randint(0, MAX_LEN + 1, (batch_size,), generator=g)
    n[0] = 0
    ones = torch.ones(batch_size, dtype=torch.long)
    lengths = torch.cat([ones, ones, n, n, ones])
    values: List[Any] = [torch.randint(0, 23, (batch_size,), generator=g), torch.randint(0, 17, (batch_size,), generator=g),
                         torch.randint(0, 41, (int(n.sum()),), generator=g), torch.randint(0, 9, (int(n.sum()),), generator=g),
                         torch.randint(0, 5, (batch_size,), generator=g)]
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["a", "b", "h", "g", "unused"], values=torch.cat(values), lengths=lengths)
    labels = torch.randint(0, 2, (batch_size,), generator=g).float()
    return ToyBatch(torch.zeros(batch_size, 1), kjt, labels)
