"""Sequence baselines with STORE's features (issue 13): DIN-style target attention over the history.

* ``din`` -- :class:`DLRM_DIN`: a TorchRec ``DLRM`` (dense arch, EBC sparse arch, dot interaction,
  over arch) plus DIN's target attention (Zhou et al., KDD 2018) over the history items that the
  ``HistoryEncoder`` (``store_rec.models.history``, the same encoder STORE uses: an unpooled
  ``EmbeddingCollection``) turns into tokens. The attention-pooled history vector joins the pooled
  sparse features as one more feature of the dot interaction.

The other two issue-13 baselines need no class: ``model.name: dlrm`` (or any DLRM-family baseline)
with ``model.history.enabled: true`` mean-pools the same history keys in its EBC
(``store_rec.models.tables``), and the OneTrans-style model (one dense-attention transformer over
sequence and non-sequence tokens) is ``model.name: store`` with ``attention.type: vanilla``.

Target attention (:class:`TargetAttentionPooling`), per sample with ``N`` history items of width
``E = T * D`` (the item's ``T`` tokens concatenated: ``T = K`` SID tokens or ``1`` raw-ID token)::

    q          = target item vector                            Tensor[B, E]
    s_j        = MLP([h_j, q, h_j - q, h_j * q]) -> scalar     (DIN's activation unit)
    w          = softmax over the VALID items j of s           (padding gets w_j = 0; a cold user with
                                                                no valid item gets w = 0 everywhere)
    pooled     = sum_j w_j h_j                                 Tensor[B, E] -> Linear -> Tensor[B, D]

DIN's paper leaves the weights unnormalised; the softmax keeps the pooled vector on the scale of one
item whatever the history length (the setting compared in issue 13 sweeps N from 16 to 128).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torchrec.models.dlrm import DenseArch, InteractionArch, OverArch, SparseArch
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from store_rec.models.config import ModelConfig
from store_rec.models.ranking import RankingModel


class TargetAttentionPooling(nn.Module):
    """DIN's activation unit and masked-softmax pooling (see module docstring).

    ``forward(items: Tensor[B, N, E], valid: Tensor[B, N] bool, target: Tensor[B, E]) ->
    (pooled: Tensor[B, E], weights: Tensor[B, N])``; ``weights`` sum to 1 over the valid items of a
    row (0 on padding; all 0 for a row without valid item, whose ``pooled`` is then 0).

    FLOPs per sample (forward): ``N * (2 * 4E * h_1 + sum_i 2 * h_i * h_{i+1} + 2 * h_last)`` for the
    MLP plus ``2 * N * E`` for the pooling: linear in ``N``, like the lookups.
    """

    def __init__(self, item_dim: int, hidden: Sequence[int] = (64,)) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        width = 4 * item_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.PReLU()]  # DIN uses PReLU / Dice in the activation unit
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        self.item_dim = item_dim

    def scores(self, items: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Unnormalised scores ``Tensor[B, N]`` of ``items: Tensor[B, N, E]`` for ``target: Tensor[B, E]``."""
        q = target.unsqueeze(1).expand_as(items)
        return self.mlp(torch.cat([items, q, items - q, items * q], dim=-1)).squeeze(-1)

    def forward(self, items: torch.Tensor, valid: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        s = self.scores(items, target)
        # a finite fill (not -inf): a row with no valid item gets a uniform softmax, zeroed below, so
        # neither the forward nor the backward sees a NaN
        s = s.masked_fill(~valid, torch.finfo(s.dtype).min)
        w = torch.softmax(s, dim=-1) * valid.to(s.dtype)
        return torch.einsum("bn,bne->be", w, items), w


class DLRM_DIN(nn.Module):
    """TorchRec ``DLRM`` + DIN target attention over history tokens.

    Args:
        embedding_bag_collection: the pooled features (same tables as ``dlrm``; dim D).
        history_encoder: ``forward(kjt) -> HistoryTokens(tokens: Tensor[B, N*T, D], valid: Tensor[B, N]
            bool)`` (``store_rec.models.history.HistoryEncoder``; left-padded, newest item last).
        dense_in_features, dense_arch_layer_sizes, over_arch_layer_sizes, dense_device: as in
            ``torchrec.models.dlrm.DLRM`` (``dense_arch_layer_sizes[-1] == D``).
        target_features: the EBC features of the target item (its K SIDs, or its raw ID), in the same
            order as the history item's tokens: their pooled embeddings, concatenated, are the query
            (projected to ``T * D`` by a linear layer when their count differs from ``T``).
        tokens_per_item: T, the tokens of one history item.
        history_len: N (max items), for FLOPs counting on synthetic inputs (:meth:`dense_step`).
        attention_hidden: hidden sizes of DIN's activation unit.

    ``forward(dense_features: Tensor[B, dense_in], sparse_features: KJT) -> Tensor[B, 1]``: the dot
    interaction sees ``F + 1`` sparse vectors (the EBC's F plus the attention-pooled history).
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        history_encoder: nn.Module,
        dense_in_features: int,
        dense_arch_layer_sizes: List[int],
        over_arch_layer_sizes: List[int],
        *,
        target_features: Sequence[str],
        tokens_per_item: int,
        history_len: int,
        attention_hidden: Sequence[int] = (64,),
        dense_device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        D = embedding_bag_collection.embedding_bag_configs()[0].embedding_dim
        if dense_arch_layer_sizes[-1] != D:
            raise ValueError(f"dense_arch_layer_sizes[-1] ({dense_arch_layer_sizes[-1]}) must equal the embedding dim {D}")
        self.sparse_arch = SparseArch(embedding_bag_collection)
        names = self.sparse_arch.sparse_feature_names
        missing = [f for f in target_features if f not in names]
        if not target_features or missing:
            raise ValueError(f"target_features {list(target_features)}: must be non-empty EBC features (missing {missing})")
        self.history_encoder = history_encoder
        self.embedding_dim, self.tokens_per_item, self.history_len = D, int(tokens_per_item), int(history_len)
        E = self.tokens_per_item * D
        self.register_buffer("target_index", torch.tensor([names.index(f) for f in target_features]), persistent=False)
        self.dense_arch = DenseArch(dense_in_features, dense_arch_layer_sizes, device=dense_device)
        Q = len(target_features)
        self.query = (nn.Identity() if Q == self.tokens_per_item else nn.Linear(Q * D, E)).to(dense_device)
        self.attention = TargetAttentionPooling(E, attention_hidden).to(dense_device)
        self.history_out = (nn.Identity() if E == D else nn.Linear(E, D)).to(dense_device)
        F = len(names) + 1
        self.inter_arch = InteractionArch(num_sparse_features=F)
        # DLRM's InteractionArch output: D + C(F + 1, 2) with F sparse + 1 dense vectors
        self.over_arch = OverArch(D + (F + 1) * F // 2, over_arch_layer_sizes, device=dense_device)

    def pool_history(self, sparse: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``sparse: Tensor[B, F, D]`` (pooled EBC features), ``tokens: Tensor[B, N*T, D]``, ``valid:
        Tensor[B, N]`` -> ``(history vector Tensor[B, D], weights Tensor[B, N])``."""
        B, N = valid.shape
        items = tokens.reshape(B, N, self.tokens_per_item * self.embedding_dim)
        target = self.query(sparse.index_select(1, self.target_index).reshape(B, -1))
        pooled, w = self.attention(items, valid, target)
        return self.history_out(pooled), w

    def interact(self, dense_features: torch.Tensor, sparse: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """After the lookups: ``dense_features: Tensor[B, dense_in]``, ``sparse: Tensor[B, F, D]`` ->
        ``Tensor[B, 1]``."""
        ed = self.dense_arch(dense_features)
        hist, _ = self.pool_history(sparse, tokens, valid)
        x = torch.cat([sparse, hist.unsqueeze(1)], dim=1)
        return self.over_arch(self.inter_arch(dense_features=ed, sparse_features=x))

    def forward(self, dense_features: torch.Tensor, sparse_features) -> torch.Tensor:  # noqa: ANN001
        sparse = self.sparse_arch(sparse_features)
        h = self.history_encoder(sparse_features)
        return self.interact(dense_features, sparse, h.tokens, h.valid)


class SequenceBaseline(RankingModel):
    """A sequence baseline (``din``) in the harness: ``forward(batch) -> ModelOutput(logits, {})``;
    ``embedding_collection`` is its history encoder's ``EmbeddingCollection`` (sharded by DMP)."""

    def dense_step(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """For FLOPs counting: random history tokens of the full length N (every item valid), i.e.
        the cost of a user with a full history; the lookups are not counted."""
        m = self.model
        B, N, T, D = int(sparse.shape[0]), int(m.history_len), int(m.tokens_per_item), int(m.embedding_dim)
        tokens = torch.randn(B, N * T, D, device=sparse.device, dtype=sparse.dtype, requires_grad=sparse.requires_grad)
        valid = torch.ones(B, N, dtype=torch.bool, device=sparse.device)
        return m.interact(dense, sparse, tokens, valid)

    def dense_children(self) -> Dict[str, nn.Module]:
        return {n: c for n, c in self.model.named_children() if n not in ("sparse_arch", "history_encoder")}

    @property
    def embedding_collection(self) -> Optional[nn.Module]:
        return getattr(self.model.history_encoder, "embedding_collection", None)


def target_features(schema, cfg: ModelConfig, ebc_features: Sequence[str]) -> List[str]:  # noqa: ANN001
    """The target item's EBC features, matching the history item's tokens: its SIDs (``item_tokens:
    sid``, when they are among the EBC features) else its raw ID (``model.item_feature`` or the
    dataset's history item feature)."""
    from store_rec.errors import UserError

    sids = [f.name for f in schema.features_with_role("sid") if f.name in ebc_features]
    if cfg.history.item_tokens == "sid" and sids:
        return sids
    item = cfg.item_feature or (schema.params.get("history") or {}).get("item_feature")
    if item in ebc_features:
        return [item]
    if sids:
        return sids
    raise UserError("model.name: 'din' needs the target item among the model's features: its SIDs (sid_*) or "
                    f"its raw ID {item!r} (model.tokenizer=none)")


def build_din(cfg: ModelConfig, schema, ebc: EmbeddingBagCollection, dense_in: int, const_dense: bool,  # noqa: ANN001
              history_encoder: nn.Module, dense_device: Optional[torch.device] = None) -> SequenceBaseline:
    """``din`` over ``ebc`` (the ``dlrm`` tables) and ``history_encoder`` (a ``HistoryEncoder`` of
    ``model.history``: ``tokens_per_item`` T and ``max_len`` N)."""
    names = [n for c in ebc.embedding_bag_configs() for n in c.feature_names]
    model = DLRM_DIN(ebc, history_encoder, dense_in, [*cfg.dense_arch, cfg.embedding_dim], [*cfg.over_arch, 1],
                     target_features=target_features(schema, cfg, names), tokens_per_item=history_encoder.tokens_per_item,
                     history_len=history_encoder.max_len, attention_hidden=cfg.din.attention_hidden, dense_device=dense_device)
    return SequenceBaseline(model, dense_in if not const_dense else 0, const_dense, "din")
