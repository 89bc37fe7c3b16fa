"""Behaviour sequences as tokens: the user's history items -> dense, left-padded token sequences.

:class:`HistoryEncoder` owns a TorchRec ``EmbeddingCollection`` (unpooled: one embedding per list
element, sharded by ``DistributedModelParallel`` like the EBC; tables ``t_<key>``) over the history
keys of the batch's KJT, and a :class:`HistoryTokenArch` that turns the EC's ``Dict[str,
JaggedTensor]`` into ``HistoryTokens(tokens: Tensor[B, N*T, D], valid: BoolTensor[B, N])``::

    encoder = HistoryEncoder(item_keys=["hist_item_id_sid_0", "hist_item_id_sid_1", "hist_item_id_sid_2"],
                             side_keys=["hist_gap"], num_embeddings={...}, embedding_dim=16, max_len=64)
    h = encoder(batch.sparse_features)     # h.tokens: [B, 64 * 3, 16], h.valid: [B, 64]

Token layout (T = ``len(item_keys)`` tokens per item: the K SID keys ``{H}_sid_k``, or the raw item
key ``H``): item-major, ``tokens[:, i*T + t]`` = token t of history slot i, so a MoBA block of
``m * T`` tokens is exactly m whole items. Each token = its item key's embedding + the sum of the
item's side-key embeddings (``side_keys``, e.g. genre, recency bucket) + a learned
position-from-newest embedding (``position=True``; 0 = the newest item).

Padding rule: the history lists come OLDEST -> NEWEST (the data contract); the most recent
``min(len, N)`` items of a row are kept and placed right-aligned (LEFT padding), so the newest item
is always slot N - 1 and the position of slot i from the newest is N - 1 - i. Padding slots have
``valid = False`` and all-zero tokens; attention masks them as keys (``store_rec.ops.moba``). A row
with an empty list (a cold user) is all padding. Every key the encoder reads must have the same
lengths per row (aligned lists; checked, a mismatch is a ``ValueError`` naming the key).

Pipelining: ``HistoryEncoder.forward`` only calls the (shardable) EC on the batch's KJT and then the
:class:`HistoryTokenArch` child, which holds no sharded module and so is an fx leaf for
``TrainPipelineSparseDist``: the EC's input dist is pipelined like the EBC's.

Measured cost (CPU, 1 thread, unsharded EC, B = 256, N = 64, T = 3 SID keys + 2 side keys,
D = 16, lists of 0..127 items, fwd + bwd): 36.5 ms per batch (median of 10), ~3% of a STORE train
step over those 201 tokens (1.1-1.4 s, ``scripts/bench_history.py``).
"""

from __future__ import annotations

import logging
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from store_rec.data.history import history_features
from store_rec.data.schema import ID

logger = logging.getLogger(__name__)


class HistoryTokens(NamedTuple):
    """What :class:`HistoryEncoder` returns for a batch of B rows."""

    tokens: torch.Tensor  #: Tensor[B, N*T, D], item-major (T tokens per history slot), padding slots zero
    valid: torch.Tensor  #: BoolTensor[B, N], False = a padding slot (left padding: valid slots are the last ones)


class HistoryTokenArch(nn.Module):
    """``Dict[str, JaggedTensor] (the EC's output) -> HistoryTokens`` (see the module docstring).

    Args:
        item_keys: the T keys whose embeddings are the T tokens of an item.
        side_keys: keys whose embeddings are added to every token of their item.
        max_len: N, slots per row.
        embedding_dim: D.
        position: add a learned position-from-newest embedding ``[N, D]``.
    """

    def __init__(self, item_keys: Sequence[str], side_keys: Sequence[str], max_len: int, embedding_dim: int,
                 position: bool = True) -> None:
        super().__init__()
        if not item_keys:
            raise ValueError("HistoryTokenArch: needs at least one item key")
        self.item_keys, self.side_keys = list(item_keys), list(side_keys)
        self.max_len, self.embedding_dim = int(max_len), int(embedding_dim)
        self.position: Optional[nn.Embedding] = nn.Embedding(self.max_len, self.embedding_dim) if position else None
        if self.position is not None:
            nn.init.normal_(self.position.weight, std=0.02)

    @property
    def tokens_per_item(self) -> int:
        return len(self.item_keys)

    def forward(self, embeddings: Mapping[str, JaggedTensor]) -> HistoryTokens:
        """``embeddings[key]: JaggedTensor`` (values ``[total, D]``, lengths ``[B]``) -> ``HistoryTokens``."""
        keys = self.item_keys + self.side_keys
        first = embeddings[keys[0]]
        lengths = first.lengths()
        for key in keys[1:]:
            if not torch.equal(embeddings[key].lengths(), lengths):
                raise ValueError(f"history key {key!r}: list lengths differ from {keys[0]!r} "
                                 "(history columns must be aligned: one entry per history item)")
        N = self.max_len
        B = lengths.numel()
        starts = first.offsets()[:-1]
        slot = torch.arange(N, device=lengths.device)
        kept = lengths.clamp(max=N)
        valid = slot.unsqueeze(0) >= (N - kept).unsqueeze(1)  # [B, N]
        # slot i of row b holds element lengths[b] - N + i of the row (the last N, right-aligned)
        total = first.values().shape[0]
        src = torch.where(valid, starts.unsqueeze(1) + lengths.unsqueeze(1) - N + slot.unsqueeze(0),
                          torch.full_like(valid, total, dtype=starts.dtype)).reshape(-1)

        def dense(key: str) -> torch.Tensor:  # [B, N, D], padding slots zero
            vals = embeddings[key].values()
            vals = torch.cat([vals, vals.new_zeros(1, vals.shape[1])], dim=0)  # row `total` = the padding row
            return vals.index_select(0, src).view(B, N, -1)

        tok = torch.stack([dense(k) for k in self.item_keys], dim=2)  # [B, N, T, D]
        add: Optional[torch.Tensor] = None
        for k in self.side_keys:
            add = dense(k) if add is None else add + dense(k)
        if self.position is not None:
            pos = self.position.weight.flip(0).unsqueeze(0) * valid.unsqueeze(-1).to(tok.dtype)  # slot i: N-1-i from newest
            add = pos if add is None else add + pos
        if add is not None:
            tok = tok + add.unsqueeze(2)
        return HistoryTokens(tok.reshape(B, N * self.tokens_per_item, -1), valid)


class HistoryEncoder(nn.Module):
    """History KJT keys -> ``HistoryTokens(tokens: Tensor[B, N*T, D], valid: BoolTensor[B, N])``.

    Args:
        item_keys: T keys whose embeddings are an item's T tokens (``{H}_sid_0..K-1`` or ``[H]``).
        side_keys: aligned side keys summed into every token of the item (e.g. ``hist_genre``, ``hist_gap``).
        num_embeddings: rows per key (the key's ``vocab_size``).
        embedding_dim: D (the model's, a multiple of 4 for FBGEMM).
        max_len: N.
        position: learned position-from-newest embedding.
        device: where the EC is created (``torch.device("meta")`` for DMP to materialise it sharded).

    ``forward(features: KeyedJaggedTensor) -> HistoryTokens``; the KJT may carry other keys (the EC
    reads its own). Under DMP the EC becomes a ``ShardedEmbeddingCollection`` with the same output
    (``Dict[str, JaggedTensor]``).
    """

    def __init__(self, item_keys: Sequence[str], side_keys: Sequence[str], num_embeddings: Mapping[str, int],
                 embedding_dim: int, max_len: int, position: bool = True,
                 device: Optional[torch.device] = None) -> None:
        super().__init__()
        keys = [*item_keys, *side_keys]
        if len(set(keys)) != len(keys):
            raise ValueError(f"HistoryEncoder: a key is used twice in {keys}")
        tables = [EmbeddingConfig(name=f"t_{k}", embedding_dim=int(embedding_dim), num_embeddings=int(num_embeddings[k]),
                                  feature_names=[k]) for k in keys]
        self.embedding_collection = EmbeddingCollection(tables=tables, device=device)
        self.token_arch = HistoryTokenArch(item_keys, side_keys, max_len, embedding_dim, position)
        self.keys: List[str] = keys

    @property
    def max_len(self) -> int:
        return self.token_arch.max_len

    @property
    def tokens_per_item(self) -> int:
        return self.token_arch.tokens_per_item

    @property
    def num_tokens(self) -> int:
        """N * T: history tokens per row."""
        return self.max_len * self.tokens_per_item

    def forward(self, features: KeyedJaggedTensor) -> HistoryTokens:
        return self.token_arch(self.embedding_collection(features))


# ------------------------------------------------------------------------------ from a dataset schema
def history_keys(schema, cfg) -> Dict[str, List[str]]:  # noqa: ANN001
    """``{"item": [T item keys], "side": [side keys]}`` the encoder of ``cfg`` (a ``ModelConfig`` with
    ``history.enabled``) reads from ``schema`` (the loader's schema: SID history keys appended).
    Errors (``UserError``) name the config key."""
    from store_rec.errors import UserError

    h = cfg.history
    hist = history_features(schema)
    names = {f.name for f in hist}
    if not hist:
        raise UserError(f"model.history.enabled: dataset {schema.dataset!r} has no history columns "
                        "(prepare it with a history length)")
    column = h.column
    if column is None:
        item = cfg.item_feature
        cands = [f.name for f in hist if f.history_of is not None and (
            f.history_of == item if item is not None else schema.feature(f.history_of).role == ID)]
        if len(cands) != 1:
            raise UserError(f"model.history.column: cannot tell the history item column of dataset {schema.dataset!r} "
                            f"(candidates: {cands or 'none'}; history columns: {sorted(names)}): set it")
        column = cands[0]
    elif column not in names:
        raise UserError(f"model.history.column: {column!r} is not a history column of dataset {schema.dataset!r} "
                        f"(history columns: {', '.join(sorted(names))})")
    if h.item_tokens == "id":
        item_keys = [column]
    else:
        prefix = f"{column}_sid_"
        ks = sorted((n for n in names if n.startswith(prefix) and n[len(prefix):].isdigit()),
                    key=lambda n: int(n[len(prefix):]))
        if not ks:
            online = " (model.sid_source 'online' tokenizes the target inside the model, not the history)" \
                if cfg.sid_source == "online" else ""
            raise UserError(f"model.history.item_tokens: 'sid' needs the SID keys {prefix}0.. in the batch (the loader "
                            f"adds them when a SID table for the item feature is attached){online}; or set item_tokens: id")
        item_keys = ks
    bad = [s for s in h.side if s not in names or s == column or s in item_keys]
    if bad:
        raise UserError(f"model.history.side: {bad} are not history side columns of dataset {schema.dataset!r} "
                        f"(history columns: {', '.join(sorted(names))})")
    return {"item": item_keys, "side": list(h.side)}


def history_tables(schema, cfg) -> List[EmbeddingConfig]:  # noqa: ANN001
    """The history encoder's ``EmbeddingConfig`` list (``t_<key>``, one per key it reads, item keys
    first), ``[]`` when ``model.history`` is disabled: what the model's ``EmbeddingCollection`` is
    built from, for sharding / planning without building the model (as ``embedding_tables`` is for the EBC)."""
    if not cfg.history.enabled:
        return []
    keys = history_keys(schema, cfg)
    return [EmbeddingConfig(name=f"t_{k}", embedding_dim=int(cfg.embedding_dim), num_embeddings=schema.feature(k).vocab_size,
                            feature_names=[k]) for k in keys["item"] + keys["side"]]


def history_encoder(schema, cfg, device: Optional[torch.device] = None) -> Optional[HistoryEncoder]:  # noqa: ANN001
    """The :class:`HistoryEncoder` of ``cfg.history`` over ``schema``'s history keys, or None when disabled."""
    if not cfg.history.enabled:
        return None
    keys = history_keys(schema, cfg)
    sizes = {k: schema.feature(k).vocab_size for k in keys["item"] + keys["side"]}
    data_len = schema.feature(keys["item"][0]).max_len
    if cfg.history.max_len > data_len:
        logger.warning("model.history.max_len=%d > the batches' longest history (%d, %s): every row has >= %d padding "
                       "slots (tokens that cost compute and are masked)", cfg.history.max_len, data_len, keys["item"][0],
                       cfg.history.max_len - data_len)
    return HistoryEncoder(keys["item"], keys["side"], sizes, cfg.embedding_dim, cfg.history.max_len,
                          position=cfg.history.position, device=device)
