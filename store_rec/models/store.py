"""The STORE ranking model: a TorchRec interaction arch, a ``DLRM`` subclass, and the full model.

* :class:`StoreInteractionArch` follows TorchRec's interaction-arch contract
  (``torchrec/models/dlrm.py``)::

      inter_arch(dense_features=Tensor[B, D], sparse_features=Tensor[B, F, D]) -> Tensor[B, output_dim]

  so it drops into an existing ``torchrec.models.dlrm.DLRM``::

      arch = StoreInteractionArch(num_sparse_features=F, embedding_dim=D, static_groups=[[3, 4], [5]])
      dlrm.inter_arch = arch
      dlrm.over_arch = OverArch(arch.output_dim, [64, 1])

  Inside, the F sparse features are split by index lists given at construction: ``token_indices``
  (SID / raw-ID features, one token each) and ``static_groups`` (lists of feature indices, one list
  per semantic group -> :class:`~store_rec.modules.rotation.OrthogonalRotation` -> K tokens). The
  dense embedding is one more token. Sequence ``X_0 = [dense, tokens..., rotated...]`` of length
  ``L = 1 + T + K`` (``1 + T + G`` for the fused "w/o rotation" ablation, ``1 + T + S`` with
  ``rotation.static_tokens: per_feature``: every static feature its own token), then
  ``num_layers`` post-LN blocks (static tokens: see ``rotation.static_tokens``)::

      X = LN(X + Attn(X))          # Attn = BlockSparseAttention (MoBA) or dense SDPA (vanilla)
      X = LN(X + FFN(X))           # FFN = Linear(D, ffn_dim) -> GELU -> Linear(ffn_dim, D)

  pooled by ``pooling="flatten"`` (``Tensor[B, L*D]``, default, like TorchRec's transformer DLRM)
  or ``"mean"`` (``Tensor[B, D]``), optionally followed by the pairwise dots of ``X_0``
  (``attention.dot_features``, ``L(L-1)/2``) and the layer-0 dense token (``attention.dense_skip``).

* :class:`DLRM_STORE` is built the way ``DLRM_DCN`` is: ``super().__init__`` then replace
  ``inter_arch`` and ``over_arch``; state_dict keys and ``DLRM.forward`` are DLRM's.

* :class:`StoreModel` is the full model of store_rec's training app, a
  :class:`~store_rec.models.ranking.RankingModel` (``forward(batch) -> ModelOutput(logits: Tensor[B],
  aux_losses)``), see its docstring.
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union, cast

import torch
from torch import nn
from torchrec.models.dlrm import DLRM, OverArch
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from store_rec.models.config import AttentionConfig, ModelConfig, RotationConfig, as_config
from store_rec.models.ranking import RankingModel
from store_rec.modules.rotation import OrthogonalRotation

logger = logging.getLogger(__name__)


def make_attention(embedding_dim: int, cfg: AttentionConfig, recent_blocks: int = 0) -> nn.Module:
    """``BlockSparseAttention`` for ``cfg.type == "moba"``, its dense (SDPA) mode for ``"vanilla"``
    (``recent_blocks``: history routing, ``model.history.recent_blocks``)."""
    from store_rec.ops.moba import BlockSparseAttention

    return BlockSparseAttention(
        embedding_dim,
        cfg.num_heads,
        block_size=cfg.block_size,
        sparsity=cfg.sparsity,
        routing=cfg.routing,
        dense=cfg.type == "vanilla",
        impl=cfg.impl,
        dropout=cfg.dropout,
        own_block=cfg.own_block,
        **({"recent_blocks": recent_blocks} if recent_blocks else {}),
    )


class StoreLayer(nn.Module):
    """One interaction block: ``Tensor[B, L, D] -> Tensor[B, L, D]``.

    ``X = LN(X + Attn(X)); X = LN(X + FFN(X))`` (post-LN, as the paper writes X_l). FFN is shared by
    all positions, or one per position with ``cfg.token_ffn`` (:class:`~store_rec.modules.token_ffn.TokenFFN`).
    With ``history_tokens`` R > 0 (behaviour sequences, the first R positions) and ``token_ffn``, the
    parameters are mixed as in OneTrans: the R history tokens (homogeneous: every item's SID tokens)
    share one FFN (``history_ffn``), each of the ``seq_len - R`` non-sequential tokens has its own, so
    the parameters and the per-token cost do not grow with N.
    """

    def __init__(self, embedding_dim: int, cfg: AttentionConfig, seq_len: Optional[int] = None,
                 recent_blocks: int = 0, history_tokens: int = 0) -> None:
        super().__init__()
        self.attn = make_attention(embedding_dim, cfg, recent_blocks)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.history_tokens = int(history_tokens)
        self.history_ffn: Optional[nn.Module] = None

        def shared() -> nn.Module:
            return nn.Sequential(nn.Linear(embedding_dim, cfg.ffn_dim), nn.GELU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.ffn_dim, embedding_dim))

        if cfg.token_ffn:
            if seq_len is None or seq_len <= self.history_tokens:
                raise ValueError("StoreLayer: attention.token_ffn needs seq_len > history_tokens (one FFN per "
                                 f"non-sequential token position), got {seq_len} / {self.history_tokens}")
            from store_rec.modules.token_ffn import TokenFFN

            self.ffn: nn.Module = TokenFFN(seq_len - self.history_tokens, embedding_dim, cfg.ffn_dim, cfg.dropout)
            if self.history_tokens:
                self.history_ffn = shared()
        else:
            self.ffn = shared()
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.drop = nn.Dropout(cfg.dropout)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        """``Tensor[B, L', D] -> Tensor[B, L', D]``: the FFN; with mixed parameters the leading
        ``L' - (seq_len - R)`` positions (history tokens; none in a pruned last layer) take ``history_ffn``."""
        r = x.shape[1] - self.ffn.num_tokens if self.history_ffn is not None else 0
        if r == 0:
            return self.ffn(x)
        return torch.cat([self.history_ffn(x[:, :r]), self.ffn(x[:, r:])], dim=1)

    def forward(self, x: torch.Tensor, gate: Optional[torch.Tensor] = None, key_valid: Optional[torch.Tensor] = None,
                fixed_queries_only: bool = False) -> torch.Tensor:
        """``Tensor[B, L, D] -> Tensor[B, L, D]``; with history (``key_valid: BoolTensor[B, R]``) and
        ``fixed_queries_only``: ``-> Tensor[B, L - R, D]``, the non-sequential tokens only (a last layer)."""
        a = self.attn(x, gate, key_valid, fixed_queries_only) if fixed_queries_only else self.attn(x, gate, key_valid)
        if fixed_queries_only and key_valid is not None:
            x = x[:, key_valid.shape[1]:]
        x = self.norm1(x + self.drop(a))
        return self.norm2(x + self.drop(self._ffn(x)))


class StoreInteractionArch(nn.Module):
    """STORE interaction: rotation tokens + SID tokens + dense token -> attention layers -> pooled.

    Args:
        num_sparse_features: F (features in ``sparse_features``, in SparseArch order).
        embedding_dim: D.
        token_indices: feature indices that become one token each (SID / raw-ID features).
            Default: every index not in ``static_groups``.
        static_groups: one list of feature indices per semantic group (rotation input).
            Every feature index must appear exactly once across the two arguments.
        rotation: a :class:`RotationConfig` or a dict of its keys (validated like the YAML
            ``model.rotation`` section: an unknown key or a bad value is a ``ConfigError`` naming it).
            Static tokens by ``static_tokens`` x ``enabled``: fused + on = K rotated copies of C;
            fused + off = one D-wide group-MLP token per group (the paper's "w/o rotation", same
            token count for K = G); per_feature + on = each static feature a token rotated by its
            group's R_k; per_feature + off = plain feature tokens.
        attention: an :class:`AttentionConfig` or a dict of its keys, validated the same way (type,
            sparsity, block size, layers, heads, ...).
        gate_indices: feature indices of the target item's tokens (a subset of ``token_indices``);
            with ``attention.gate == "item"`` and MoBA instance routing, the mean of their hidden
            states gates the key-block selection in every layer (the paper's "filters
            low-contributing tokens based on the target item"). Otherwise the op's default gate
            (the sample's mean query) is used.
        sid_tokenizer: an :class:`~store_rec.tokenizer.online.OnlineSIDTokenizer` (online SIDs): the
            pooled embeddings of ``tokenize_indices`` (a subset of ``token_indices``, in the
            tokenizer's feature order) become K SID tokens each instead of one raw-ID token; its
            auxiliary losses (fine-tuning) are returned by :meth:`interact` / ``forward(...,
            return_losses=True)``. ``gate_indices`` may then name
            them: the gate is the mean of their SID tokens.
        history_items, history_item_tokens: behaviour sequences (issue 13): ``forward`` then takes
            ``history: Tensor[B, history_items * history_item_tokens, D]`` (a
            :class:`~store_rec.models.history.HistoryEncoder`'s tokens, T = ``history_item_tokens``
            per item, left-padded) and ``history_valid: BoolTensor[B, history_items]``.
        history_recent_blocks: MoBA always selects the newest this many history blocks (``model.history.recent_blocks``).

    Behaviour sequences: the history tokens are **prepended** to the non-sequential tokens
    (``[history (R), dense, tokens..., rotated...]``). MoBA routes over history blocks only:
    ``attention.block_size`` must be a multiple of T, so a block is ``block_size / T`` whole items
    (the history is left-padded with empty items to a whole number of blocks, R tokens); the
    non-sequential tokens are always attended by every query, outside the routed part
    (:func:`store_rec.ops.moba.history_attention`), so ``attention.sparsity`` is the fraction of
    history blocks skipped; padding items are masked as keys and their blocks are never preferred.
    ``attention.gate: item`` gates the history blocks with the target item's tokens. Vanilla attention
    attends every valid token. The output pools the non-sequential tokens only (the history is
    context), so ``output_dim`` does not depend on the history length, and the last layer computes
    only the non-sequential tokens' queries, FFN and norms (exact: the history's last-layer outputs
    are never read; the pyramid OneTrans uses), unless ``attention.token_ffn``.

    Token order: ``[dense, plain tokens (token_indices minus tokenize_indices), SID tokens of the
    tokenized features (feature-major, K each), rotated blocks]``.

    Shapes::

        forward(dense_features: Tensor[B, D], sparse_features: Tensor[B, F, D]) -> Tensor[B, output_dim]
        output_dim = L * D (pooling "flatten") or D ("mean"), + L(L-1)/2 (dot_features) + D (dense_skip)
    """

    def __init__(
        self,
        num_sparse_features: int,
        embedding_dim: int,
        *,
        token_indices: Optional[Sequence[int]] = None,
        static_groups: Optional[Sequence[Sequence[int]]] = None,
        rotation: Union[RotationConfig, Mapping[str, object], None] = None,
        attention: Union[AttentionConfig, Mapping[str, object], None] = None,
        gate_indices: Optional[Sequence[int]] = None,
        sid_tokenizer: Optional[nn.Module] = None,
        tokenize_indices: Optional[Sequence[int]] = None,
        history_items: int = 0,
        history_item_tokens: int = 1,
        history_recent_blocks: int = 0,
    ) -> None:
        super().__init__()
        F, D = int(num_sparse_features), int(embedding_dim)
        rotation = as_config(RotationConfig, rotation, "rotation")
        attention = as_config(AttentionConfig, attention, "attention")
        self.rotation_config = rotation
        groups = [list(map(int, g)) for g in (static_groups or []) if len(g)]
        grouped = [i for g in groups for i in g]
        tokens = list(map(int, token_indices)) if token_indices is not None else [i for i in range(F) if i not in set(grouped)]
        used = tokens + grouped
        bad = [i for i in used if not 0 <= i < F]
        if bad:
            raise ValueError(f"StoreInteractionArch: feature indices {bad} out of range [0, {F})")
        if sorted(used) != list(range(F)):
            dup = sorted({i for i in used if used.count(i) > 1})
            missing = sorted(set(range(F)) - set(used))
            raise ValueError(
                f"StoreInteractionArch: every sparse feature index must be used exactly once "
                f"(duplicated: {dup}, unassigned: {missing})"
            )
        self.num_sparse_features, self.embedding_dim = F, D
        self.pooling = attention.pooling
        online = [int(i) for i in (tokenize_indices or [])]
        if (sid_tokenizer is None) != (not online):
            raise ValueError("StoreInteractionArch: sid_tokenizer and tokenize_indices come together")
        if any(i not in tokens for i in online):
            raise ValueError(f"StoreInteractionArch: tokenize_indices {online} must be token features {tokens}")
        if sid_tokenizer is not None:
            if len(sid_tokenizer.features) != len(online) or sid_tokenizer.model_dim != D:
                raise ValueError(f"StoreInteractionArch: sid_tokenizer emits {len(sid_tokenizer.features)} feature(s) x "
                                 f"{sid_tokenizer.model_dim} dims, expected {len(online)} x {D}")
            tokens = [i for i in tokens if i not in online]
        self.sid_tokenizer = sid_tokenizer
        self.register_buffer("tokenize_index", torch.tensor(online, dtype=torch.long), persistent=False)
        n_sid = len(online) * (sid_tokenizer.num_sids if sid_tokenizer is not None else 0)
        self.use_rotation = bool(rotation.enabled and groups)
        self.static_tokens = rotation.static_tokens
        self.group_tokens: Optional[nn.Module] = None
        if self.use_rotation:
            self.register_buffer("token_index", torch.tensor(tokens, dtype=torch.long), persistent=False)
            self.register_buffer("static_index", torch.tensor(grouped, dtype=torch.long), persistent=False)
            self.rotation: Optional[OrthogonalRotation] = OrthogonalRotation(
                D,
                [len(g) for g in groups],
                num_rotations=rotation.num_rotations,
                mlp_hidden=rotation.mlp_hidden,
                method=rotation.method,
                static_tokens=rotation.static_tokens,
            )
            n_rot = self.rotation.num_tokens
        elif groups and rotation.static_tokens == "fused":
            # the paper's "w/o rotation" (Table 2): same group MLPs, one D-wide token per group
            from store_rec.modules.group_tokens import GroupTokens

            self.register_buffer("token_index", torch.tensor(tokens, dtype=torch.long), persistent=False)
            self.register_buffer("static_index", torch.tensor(grouped, dtype=torch.long), persistent=False)
            self.rotation = None
            self.group_tokens = GroupTokens(D, [len(g) for g in groups], mlp_hidden=rotation.mlp_hidden)
            n_rot = self.group_tokens.num_tokens
        else:  # per_feature without rotation (or no static groups): static features are plain tokens
            self.register_buffer("token_index", torch.tensor(tokens + grouped, dtype=torch.long), persistent=False)
            self.register_buffer("static_index", torch.zeros(0, dtype=torch.long), persistent=False)
            self.rotation = None
            n_rot = 0
        n_plain = int(self.token_index.numel())
        self.seq_len = 1 + n_plain + n_sid + n_rot
        # positions (in the token sequence) whose mean gates MoBA's instance routing
        gate_pos: List[int] = []
        if attention.gate == "item" and attention.type == "moba" and attention.routing == "instance":
            seq_of: Dict[int, object] = {f: 1 + i for i, f in enumerate(self.token_index.tolist())}
            if sid_tokenizer is not None:
                K = sid_tokenizer.num_sids
                seq_of.update({f: range(1 + n_plain + j * K, 1 + n_plain + (j + 1) * K) for j, f in enumerate(online)})
            missing = [i for i in (gate_indices or []) if i not in seq_of]
            if not gate_indices or missing:
                raise ValueError(
                    f"attention.gate='item' needs gate_indices among the token features (got {list(gate_indices or [])})"
                )
            for i in gate_indices:
                p = seq_of[int(i)]
                gate_pos.extend(p if isinstance(p, range) else [p])
        self.register_buffer("gate_pos", torch.tensor(gate_pos, dtype=torch.long), persistent=False)
        # behaviour sequences: R history tokens before the seq_len non-sequential ones
        self.history_items, self.history_item_tokens = int(history_items), int(history_item_tokens)
        self.history_pad_items = 0
        if self.history_items:
            T = self.history_item_tokens
            if attention.type == "moba":
                if attention.routing != "instance":
                    raise ValueError(f"attention.routing: history tokens need 'instance' routing, got {attention.routing!r}")
                if T < 1 or attention.block_size % T:
                    raise ValueError(f"attention.block_size: must be a multiple of the {T} tokens per history item "
                                     f"(a MoBA block = whole items), got {attention.block_size}")
                per_block = attention.block_size // T
                self.history_pad_items = -self.history_items % per_block
        self.num_history_tokens = (self.history_items + self.history_pad_items) * self.history_item_tokens
        # the last layer's history outputs are never read (the output pools the non-sequential tokens):
        # it computes the non-sequential queries only (exact)
        self.prune_last = bool(self.history_items)
        self.num_tokens = self.num_history_tokens + self.seq_len  # the attention's sequence length L
        recent = int(history_recent_blocks) if self.history_items else 0
        self.layers = nn.ModuleList(StoreLayer(D, attention, self.num_tokens, recent, self.num_history_tokens)
                                    for _ in range(attention.num_layers))
        self.dots: Optional[nn.Module] = None
        if attention.dot_features:
            from store_rec.modules.pairwise import PairwiseDot

            self.dots = PairwiseDot(self.seq_len)
        self.dense_skip = bool(attention.dense_skip)
        self.output_dim = ((self.seq_len * D if self.pooling == "flatten" else D)
                           + (self.dots.output_dim if self.dots is not None else 0) + (D if self.dense_skip else 0))

    def tokens(self, dense_features: torch.Tensor, sparse_features: torch.Tensor) -> torch.Tensor:
        """The layer-1 input ``X_0: Tensor[B, L, D]`` = [dense, tokens..., rotated...]."""
        return self._tokens(dense_features, sparse_features)[0]

    def sid_loss_names(self) -> Tuple[str, ...]:
        """Names (``sid_<name>``) of the online tokenizer's losses that :meth:`forward` returns in the
        current mode: the tokenizer's ``loss_names`` while fine-tuning in train mode, else none."""
        t = self.sid_tokenizer
        if t is None or not (t.finetune and t.training):
            return ()
        return tuple(f"sid_{n}" for n in t.loss_names)

    def _tokens(self, dense_features: torch.Tensor, sparse_features: torch.Tensor) -> Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]:
        """``(X_0: Tensor[B, L, D], the online tokenizer's losses in :meth:`sid_loss_names` order)``."""
        parts = [dense_features.unsqueeze(1), sparse_features.index_select(1, self.token_index)]
        sid_losses: Tuple[torch.Tensor, ...] = ()
        if self.sid_tokenizer is not None:
            sid_tokens, tok_aux = self.sid_tokenizer(sparse_features.index_select(1, self.tokenize_index))
            names = self.sid_loss_names()
            if {f"sid_{k}" for k in tok_aux} != set(names):
                raise RuntimeError(f"online tokenizer returned losses {sorted(tok_aux)}, expected {list(names)}")
            sid_losses = tuple(tok_aux[n[len("sid_"):]] for n in names)
            parts.append(sid_tokens)
        if self.rotation is not None:
            parts.append(self.rotation(sparse_features.index_select(1, self.static_index)))
        if self.group_tokens is not None:
            parts.append(self.group_tokens(sparse_features.index_select(1, self.static_index)))
        return torch.cat(parts, dim=1), sid_losses

    def history_sequence(self, history: torch.Tensor, history_valid: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(Tensor[B, N*T, D], BoolTensor[B, N]) -> (Tensor[B, R, D], BoolTensor[B, R])``: the history
        tokens left-padded with empty items to R = :attr:`num_history_tokens` and the per-token key validity."""
        B, NT, D = history.shape
        T, P = self.history_item_tokens, self.history_pad_items
        if NT != self.history_items * T or history_valid.shape != (B, self.history_items):
            raise ValueError(f"history tokens {tuple(history.shape)} / valid {tuple(history_valid.shape)}: expected "
                             f"[B, {self.history_items * T}, D] / [B, {self.history_items}]")
        valid = history_valid.repeat_interleave(T, dim=1)
        if P:
            history = torch.cat([history.new_zeros(B, P * T, D), history], dim=1)
            valid = torch.cat([valid.new_zeros(B, P * T), valid], dim=1)
        return history, valid

    def forward(
        self, dense_features: torch.Tensor, sparse_features: torch.Tensor, return_losses: bool = False,
        history: Optional[torch.Tensor] = None, history_valid: Optional[torch.Tensor] = None,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]]:
        """``dense_features: Tensor[B, D], sparse_features: Tensor[B, F, D] -> Tensor[B, output_dim]``
        (TorchRec's interaction-arch contract). Output = ``[pooled X_L, dots(X_0) (dot_features),
        X_0[:, 0] (dense_skip)]``. With ``return_losses=True``: ``(Tensor[B, output_dim], losses)``, the
        online tokenizer's losses of this batch (``Tensor[]`` each, weighted by the tokenizer's own
        weights) in :meth:`sid_loss_names` order (see :meth:`interact`).

        With behaviour sequences (``history_items > 0``): ``history: Tensor[B, N*T, D]``,
        ``history_valid: BoolTensor[B, N]`` (required); ``X_L`` pools the non-sequential tokens only."""
        x0, sid_losses = self._tokens(dense_features, sparse_features)
        x = x0
        R = self.num_history_tokens
        key_valid: Optional[torch.Tensor] = None
        if self.history_items:
            if history is None or history_valid is None:
                raise ValueError("StoreInteractionArch: built with history_items, needs history and history_valid")
            h, key_valid = self.history_sequence(history, history_valid)
            x = torch.cat([h, x0], dim=1)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            gate = x[:, R:].index_select(1, self.gate_pos).mean(dim=1) if self.gate_pos.numel() else None
            x = layer(x, gate, key_valid, fixed_queries_only=self.prune_last and i == last)
        if R and not self.prune_last:
            x = x[:, R:]
        out = [x.flatten(1) if self.pooling == "flatten" else x.mean(dim=1)]
        if self.dots is not None:
            out.append(self.dots(x0))
        if self.dense_skip:
            out.append(x0[:, 0])
        y = torch.cat(out, dim=1) if len(out) > 1 else out[0]
        return (y, sid_losses) if return_losses else y

    def interact(self, dense_features: torch.Tensor, sparse_features: torch.Tensor, history: Optional[torch.Tensor] = None,
                 history_valid: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """``(Tensor[B, output_dim], {"sid_<name>": Tensor[]})``: :meth:`forward` with the online
        tokenizer's losses by name (``{}`` without an online tokenizer or while it is frozen / in
        eval mode). They are returned, not stored on the module.

        The arch is called as a module (not its ``forward`` method) and its outputs are indexed, not
        iterated: ``TrainPipelineSparseDist`` fx-traces the train wrapper with this arch as a leaf."""
        out = self(dense_features=dense_features, sparse_features=sparse_features, return_losses=True, history=history,
                   history_valid=history_valid)
        losses = out[1]
        return out[0], {n: losses[i] for i, n in enumerate(self.sid_loss_names())}

    def aux_loss_weights(self) -> Dict[str, float]:
        """Default weight of each auxiliary loss: ``"diversity"`` -> ``rotation.diversity_weight`` (with
        rotation); each ``"sid_<name>"`` of a fine-tuned online tokenizer -> 1 (the tokenizer weighs its own)."""
        w = {"diversity": float(self.rotation_config.diversity_weight)} if self.use_rotation else {}
        tok = self.sid_tokenizer
        if tok is not None and tok.finetune:
            w.update({f"sid_{k}": 1.0 for k in tok.loss_names})
        return w

    def aux_losses(self) -> Dict[str, torch.Tensor]:
        """The parameter losses: ``{"diversity": -sum_{i<j}||R_i - R_j||_F^2}`` (unweighted) with rotation,
        ``{}`` without. (The online tokenizer's batch losses come from :meth:`interact`.)"""
        return {"diversity": self.rotation.diversity_loss()} if self.rotation is not None else {}

    def analytic_flops_modules(self) -> Dict[nn.Module, Callable[[int, bool], int]]:
        """Attention modules -> ``fn(batch_size, backward) -> FLOPs`` (counted analytically by
        ``store_rec.ops.flops``: ``FlopCounterMode`` sees 0 for CPU SDPA)."""
        L, R = self.num_tokens, self.num_history_tokens
        last = len(self.layers) - 1
        return {layer.attn: (lambda b, bw, a=layer.attn, q=(self.seq_len if self.prune_last and i == last else None):
                             int(a.flops(b, L, backward=bw, history=R, queries=q))) for i, layer in enumerate(self.layers)}


def _feature_indices(names: Sequence[str], groups: Optional[Union[Mapping[str, Sequence[str]], Sequence[Sequence[str]]]]):
    groups_list = list(groups.values()) if isinstance(groups, Mapping) else list(groups or [])
    pos = {n: i for i, n in enumerate(names)}
    unknown = [f for g in groups_list for f in g if f not in pos]
    if unknown:
        raise KeyError(f"static_groups name unknown sparse features {unknown}; the model has: {', '.join(names)}")
    return [[pos[f] for f in g] for g in groups_list]


class DLRM_STORE(DLRM):
    """TorchRec ``DLRM`` with :class:`StoreInteractionArch` as its interaction (like ``DLRM_DCN``).

    Args:
        embedding_bag_collection, dense_in_features, dense_arch_layer_sizes, over_arch_layer_sizes,
        dense_device: as in ``torchrec.models.dlrm.DLRM`` (all tables share one embedding_dim D and
            ``dense_arch_layer_sizes[-1] == D``).
        static_groups: semantic groups of static features by *feature name* (mapping group ->
            names, or a list of name lists); every other feature is a token.
        rotation, attention: :class:`RotationConfig` / :class:`AttentionConfig`, or dicts of their keys
            (validated as the YAML sections, errors naming the key).
        gate_features: names of the target item's features (e.g. ``sid_0 .. sid_{K-1}``) for
            ``attention.gate == "item"``.
        sid_tokenizer: an ``OnlineSIDTokenizer`` over some token features (its ``features``, by
            name): their pooled embeddings become K SID tokens each (online SIDs).
        history_encoder: a :class:`~store_rec.models.history.HistoryEncoder` (behaviour sequences):
            its tokens of the same KJT are prepended to the interaction's tokens (``self.history``);
            ``history_recent_blocks``: the newest blocks MoBA always selects.

    ``forward(dense_features: Tensor[B, dense_in_features], sparse_features: KJT) -> Tensor[B, 1]``
    (DLRM's forward, plus the history encoder when there is one), so
    ``torchrec.models.dlrm.DLRMTrain(DLRM_STORE(...))`` trains it.
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        dense_arch_layer_sizes: List[int],
        over_arch_layer_sizes: List[int],
        *,
        static_groups: Optional[Union[Mapping[str, Sequence[str]], Sequence[Sequence[str]]]] = None,
        rotation: Union[RotationConfig, Mapping[str, object], None] = None,
        attention: Union[AttentionConfig, Mapping[str, object], None] = None,
        gate_features: Optional[Sequence[str]] = None,
        sid_tokenizer: Optional[nn.Module] = None,
        dense_device: Optional[torch.device] = None,
        history_encoder: Optional[nn.Module] = None,
        history_recent_blocks: int = 0,
    ) -> None:
        super().__init__(
            embedding_bag_collection,
            dense_in_features,
            dense_arch_layer_sizes,
            over_arch_layer_sizes,
            dense_device,
        )
        D = embedding_bag_collection.embedding_bag_configs()[0].embedding_dim
        names = self.sparse_arch.sparse_feature_names
        self.inter_arch = StoreInteractionArch(
            num_sparse_features=len(names),
            embedding_dim=D,
            static_groups=_feature_indices(names, static_groups),
            rotation=rotation,
            attention=attention,
            gate_indices=_feature_indices(names, [list(gate_features or [])])[0],
            sid_tokenizer=sid_tokenizer,
            tokenize_indices=_feature_indices(names, [list(sid_tokenizer.features)])[0] if sid_tokenizer is not None else None,
            history_items=history_encoder.max_len if history_encoder is not None else 0,
            history_item_tokens=history_encoder.tokens_per_item if history_encoder is not None else 1,
            history_recent_blocks=history_recent_blocks,
        )
        self.history = history_encoder
        if dense_device is not None:
            self.inter_arch.to(dense_device)
            if history_encoder is not None:
                history_encoder.token_arch.to(dense_device)
        self.over_arch = OverArch(
            in_features=self.inter_arch.output_dim,
            layer_sizes=over_arch_layer_sizes,
            device=dense_device,
        )

    def forward(self, dense_features: torch.Tensor, sparse_features) -> torch.Tensor:  # noqa: ANN001
        """DLRM's forward; with a history encoder its tokens join the interaction. ``-> Tensor[B, 1]``."""
        if self.history is None:
            return super().forward(dense_features, sparse_features)
        embedded_dense = self.dense_arch(dense_features)
        embedded_sparse = self.sparse_arch(sparse_features)
        h = self.history(sparse_features)
        concatenated = self.inter_arch(dense_features=embedded_dense, sparse_features=embedded_sparse,
                                       history=h.tokens, history_valid=h.valid)
        return self.over_arch(concatenated)


# ---------------------------------------------------------------------------- the full model
def _item_features(schema, cfg: ModelConfig, tokens: Sequence[str]) -> List[str]:  # noqa: ANN001
    """The target item's token features: its SIDs, else its raw ID (``model.item_feature``; with online
    SIDs its K SID tokens)."""
    if cfg.sid_source == "online" and cfg.tokenizer != "none":
        return [cfg.item_feature]
    from store_rec.data.feature_sids import tokenized_features

    other = {k for keys in tokenized_features(schema).values() for k in keys}  # data.sid_tables: not the item's
    sids = [f.name for f in schema.features_with_role("sid") if f.name in tokens and f.name not in other]
    if sids:
        return sids
    if cfg.item_feature in tokens:
        return [cfg.item_feature]
    from store_rec.errors import UserError

    raise UserError("model.attention.gate: 'item' needs SID features or model.item_feature among the token features")


class StoreModel(RankingModel):
    """STORE for store_rec's training app: KJT -> EBC -> rotation + SID tokens -> MoBA layers -> logit.

    ``StoreModel(schema, cfg, device=None, dense_device=None)``:

    * one ``EmbeddingBagCollection`` over :func:`~store_rec.models.tables.embedding_tables` (SID
      features from the batch, or raw IDs with ``tokenizer: none``, plus static features), created
      on ``device`` — pass ``torch.device("meta")`` and let ``DistributedModelParallel`` shard and
      materialise it; the dense parts go on ``dense_device`` (default CPU; DMP moves them);
    * the batch's KJT feeds the EBC unchanged, so ``TrainPipelineSparseDist`` pipelines it;
    * the inner module is a :class:`DLRM_STORE` (``self.model``), so state_dict keys are DLRM's
      under ``model.``.

    ``forward(batch) -> ModelOutput(logits: Tensor[B], aux_losses={"diversity": Tensor[]})`` (no aux
    without rotation), computed by :meth:`logits_and_aux` (DLRM's forward, with the losses the
    interaction returns).
    Loss = ``bce + sum(aux_loss_weights()[k] * aux[k])``; ``aux_loss_weights() == {"diversity":
    cfg.rotation.diversity_weight}``. Rotation parameters for the alternating optimizer:
    ``store_rec.modules.rotation.rotation_parameters(model)`` / ``split_rotation_params``.

    Online SIDs (``sid_source: online``): the EBC keeps the raw ``item_feature`` table (pre-trained
    vectors loaded into it by the train app, ``model.online.embeddings``) and an
    ``OnlineSIDTokenizer`` turns its pooled embedding into K SID tokens after the (sharded) EBC, so
    the pipeline still overlaps the input dist. The tokenizer comes from ``model.online.tokenizer``
    (or ``sid_tokenizer=``, an already built tokenizer module, e.g. in tests); while fine-tuning,
    its losses (returned by :meth:`StoreInteractionArch.interact`) join ``aux`` as ``sid_<name>`` and ``aux_loss_weights()`` gives each of them weight 1
    (they are already weighted by the tokenizer), for whatever names the tokenizer returns.
    """

    def __init__(self, schema, cfg: ModelConfig, device: Optional[torch.device] = None, dense_device: Optional[torch.device] = None,  # noqa: ANN001
                 sid_tokenizer: Optional[nn.Module] = None) -> None:
        from store_rec.models.tables import embedding_tables, model_features

        feats = model_features(schema, cfg)
        online = _online_tokenizer(cfg, feats.online, sid_tokenizer) if feats.online else None
        from store_rec.models.history import history_encoder

        tables = embedding_tables(schema, cfg)
        history = history_encoder(schema, cfg, device=device)
        if history is not None and cfg.attention.type == "moba" and cfg.attention.block_size % history.tokens_per_item:
            from store_rec.errors import UserError

            raise UserError(f"model.attention.block_size: must be a multiple of the {history.tokens_per_item} tokens per "
                            f"history item (model.history.item_tokens={cfg.history.item_tokens!r}: a MoBA block = whole "
                            f"items), got {cfg.attention.block_size}")
        const_dense = len(schema.dense) == 0
        dense_in = 1 if const_dense else len(schema.dense)
        ebc = EmbeddingBagCollection(tables=tables, device=device)
        model = DLRM_STORE(
            ebc,
            dense_in_features=dense_in,
            dense_arch_layer_sizes=[*cfg.dense_arch, cfg.embedding_dim],
            over_arch_layer_sizes=[*cfg.over_arch, 1],
            static_groups=feats.static_groups,
            rotation=cfg.rotation,
            attention=cfg.attention,
            gate_features=_item_features(schema, cfg, feats.tokens) if cfg.attention.gate == "item" else None,
            sid_tokenizer=online,
            dense_device=dense_device,
            history_encoder=history,
            history_recent_blocks=cfg.history.recent_blocks,
        )
        super().__init__(model, len(schema.dense), const_dense, "store")
        self.cfg = cfg
        self.features = feats

    def aux_loss_weights(self) -> Dict[str, float]:
        return self.model.inter_arch.aux_loss_weights()

    def logits_and_aux(self, dense: torch.Tensor, sparse_features) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:  # noqa: ANN001
        """DLRM's forward (dense arch, sparse arch, interaction, over arch) with the interaction's
        losses: ``(Tensor[B, 1], {"diversity": ..., "sid_<name>": ...})``."""
        m = self.model
        embedded_dense = m.dense_arch(dense)
        embedded_sparse = m.sparse_arch(sparse_features)
        if m.history is not None:
            h = m.history(sparse_features)
            inter, sid_aux = m.inter_arch.interact(dense_features=embedded_dense, sparse_features=embedded_sparse,
                                                   history=h.tokens, history_valid=h.valid)
        else:
            inter, sid_aux = m.inter_arch.interact(dense_features=embedded_dense, sparse_features=embedded_sparse)
        logits = m.over_arch(inter)
        return logits, {**m.inter_arch.aux_losses(), **sid_aux}

    def dense_children(self) -> Dict[str, nn.Module]:
        """:meth:`RankingModel.dense_children`; the history encoder's token arch, never its (sharded) EC."""
        parts = super().dense_children()
        history = parts.pop("history", None)
        if history is not None:
            parts["history.token_arch"] = cast(nn.Module, history.token_arch)
        return parts

    @property
    def embedding_collection(self):  # noqa: ANN201
        """The history encoder's ``EmbeddingCollection`` (``model.history.enabled``), else None."""
        return self.model.history.embedding_collection if self.model.history is not None else None

    def dense_step(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """:meth:`RankingModel.dense_step`; with history, on random history tokens (every item valid)."""
        m = self.model
        if m.history is None:
            return super().dense_step(dense, sparse)
        h = m.history
        tokens = torch.randn(dense.shape[0], h.num_tokens, sparse.shape[-1], device=sparse.device, dtype=sparse.dtype,
                             requires_grad=sparse.requires_grad)
        valid = torch.ones(dense.shape[0], h.max_len, dtype=torch.bool, device=sparse.device)
        inter = m.inter_arch(dense_features=m.dense_arch(dense), sparse_features=sparse, history=tokens, history_valid=valid)
        return m.over_arch(inter)

    def analytic_flops_modules(self) -> Dict[nn.Module, Callable[[int, bool], int]]:
        return self.model.inter_arch.analytic_flops_modules()


def _online_tokenizer(cfg: ModelConfig, features: Sequence[str], tokenizer: Optional[nn.Module]) -> nn.Module:
    """The ``OnlineSIDTokenizer`` of ``model.online`` over ``features`` (checks method and dims)."""
    from store_rec.errors import UserError
    from store_rec.tokenizer.online import OnlineSIDTokenizer, load_tokenizer

    o = cfg.online
    if tokenizer is None:
        if not o.tokenizer:
            raise UserError("model.online.tokenizer: sid_source 'online' needs a tokenizer file "
                            "(`store-rec tokenize ... --save-model FILE`)")
        tokenizer, method = load_tokenizer(o.tokenizer)
        if method != cfg.tokenizer:
            raise UserError(f"model.online.tokenizer: {o.tokenizer} holds a {method!r} tokenizer, model.tokenizer is {cfg.tokenizer!r}")
    if int(tokenizer.input_dim) != cfg.embedding_dim:
        raise UserError(f"model.online.tokenizer: input dim {tokenizer.input_dim} != model.embedding_dim {cfg.embedding_dim} "
                        "(the item table feeds it: pre-train and tokenize at the model's embedding_dim)")
    return OnlineSIDTokenizer(tokenizer, list(features), cfg.embedding_dim, token_mode=o.token_mode,
                              finetune=o.finetune, aux_weight=o.aux_weight)
