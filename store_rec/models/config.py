"""``model:`` config section: which model, its sizes, and the STORE ablation switches.

YAML example (every key optional; defaults shown)::

    model:
      name: store                 # store | dlrm | dlrm_dcn | transformer | deepfm | rankmixer
      embedding_dim: 16           # every table (divisible by 4 for FBGEMM)
      tokenizer: opmq             # opmq | rqvae | opq: SID features sid_* from the batch; none: raw IDs
      sid_source: batch           # batch (SID table attached by the loader) | online (OnlineSIDTokenizer)
      item_feature: null          # id feature replaced by its SIDs (batch: dropped from the tables;
                                  # online: its pooled embedding is tokenized inside the model)
      online: {tokenizer: null, embeddings: null, finetune: false, token_mode: codes, aux_weight: 1.0}
      dense_arch: [64]            # hidden sizes of the dense MLP (a final layer of embedding_dim is added)
      over_arch: [64]             # hidden sizes of the over arch (a final layer of 1 is added)
      rotation: {enabled: true, diversity_weight: 0.1, schedule: "1:1", mlp_hidden: 32, method: cayley,
                 static_tokens: fused}
      attention: {type: moba, sparsity: 0.5, block_size: 4, routing: instance, num_layers: 2,
                  num_heads: 2, ffn_dim: 64, dropout: 0.0, pooling: flatten, gate: query, own_block: false,
                  token_ffn: false, dot_features: false, dense_skip: false}
      history: {enabled: false, max_len: 64, item_tokens: sid, side: [], position: true, column: null,
                recent_blocks: 0}

The paper's ablation variants are switches: ``tokenizer`` {opmq, rqvae, opq, none},
``rotation.enabled`` {true, false}, ``attention.type`` {moba, vanilla}.

Static tokens (``rotation.static_tokens`` x ``rotation.enabled``; docs/MODEL.md "Static tokens"):

* ``fused`` + enabled (default, the paper): group MLPs -> C (D wide) -> K rotated copies ``C R_i``.
* ``fused`` + disabled: the paper's Table 2 "w/o rotation": the same group MLPs, each widened to D,
  one token per group (G tokens = K by default: the token count is kept).
* ``per_feature`` + enabled: every static feature its own token, rotated by its group's R_k.
* ``per_feature`` + disabled: every static feature its own plain token.

Head / FFN switches (``attention``): ``token_ffn`` (a token-specific FFN per position, RankMixer /
OneTrans style; with history, the history tokens share one FFN and each non-sequential token has its
own, OneTrans's mixed parameters), ``dot_features`` (DLRM-style pairwise dots of the layer-0
non-sequential tokens into the over-arch), ``dense_skip`` (the dense token of layer 0 into the over-arch).

Behaviour sequences (``history``, issue 13): the user's last ``max_len`` items become tokens
(``store_rec.models.history.HistoryEncoder``), T per item (``item_tokens: sid`` -> K SID tokens,
``id`` -> 1 raw-ID token). In STORE they are prepended to the non-sequential tokens and MoBA routes
over *history* blocks only: ``attention.block_size`` must be a multiple of T (a block = whole items)
and the non-sequential tokens are always attended (see ``store_rec.ops.moba.history_attention``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Literal, Mapping, Optional, Type, TypeVar, Union

from store_rec.config import ConfigError, check, from_dict
from store_rec.ops.moba_rules import moba_problem

MODEL_NAMES = ("store", "dlrm", "dlrm_dcn", "transformer", "deepfm", "rankmixer", "din")


@dataclass
class RotationConfig:
    """Orthogonal rotation of static-feature groups (``store_rec.modules.rotation``)."""

    enabled: bool = True
    diversity_weight: float = 0.1  # lambda of -lambda * sum_{i<j} ||R_i - R_j||_F^2
    schedule: str = "1:1"  # "joint" or "M:R" main:rotation steps (AlternatingSchedule)
    num_rotations: Optional[int] = None  # K; default = number of static groups
    mlp_hidden: int = 32  # hidden width of each group MLP (0 = linear)
    method: Literal["cayley", "matrix_exp", "qr"] = "cayley"
    # "fused": group MLPs -> C -> K rotated copies (paper); "per_feature": one token per static
    # feature, rotated by its group's R_k (K = number of groups)
    static_tokens: Literal["fused", "per_feature"] = "fused"

    def __post_init__(self) -> None:
        check(self.diversity_weight >= 0, "diversity_weight", f"must be >= 0, got {self.diversity_weight}")
        check(self.mlp_hidden >= 0, "mlp_hidden", f"must be >= 0, got {self.mlp_hidden}")
        check(self.num_rotations is None or self.num_rotations >= 1, "num_rotations", f"must be >= 1, got {self.num_rotations}")
        from store_rec.modules.rotation import AlternatingSchedule

        try:
            AlternatingSchedule(self.schedule)
        except ValueError as e:
            check(False, "schedule", str(e))


@dataclass
class AttentionConfig:
    """The interaction layers: attention type and transformer sizes."""

    type: Literal["moba", "vanilla"] = "moba"
    sparsity: float = 0.5  # MoBA: fraction of key blocks skipped
    block_size: int = 4
    routing: Literal["query", "query_block", "instance"] = "instance"
    impl: Literal["fast", "reference"] = "fast"
    num_layers: int = 2
    num_heads: int = 2
    ffn_dim: int = 64
    dropout: float = 0.0
    pooling: Literal["flatten", "mean"] = "flatten"
    # instance routing only: "query" = the sample's mean query gates the key blocks (the op's
    # default); "item" = the mean of the target item's tokens (the SID features) gates them.
    gate: Literal["query", "item"] = "query"
    # query / query_block routing: always select the query's own block (as causal MoBA does)
    own_block: bool = False
    # token-specific FFN per position (RankMixer / OneTrans) instead of one shared FFN
    token_ffn: bool = False
    # DLRM-style pairwise dot products of the layer-0 tokens, concatenated to the pooled output
    dot_features: bool = False
    # the layer-0 dense token concatenated to the pooled output (a skip past the attention layers)
    dense_skip: bool = False

    def __post_init__(self) -> None:
        bad = moba_problem(block_size=self.block_size, sparsity=self.sparsity, routing=self.routing,
                           own_block=self.own_block, impl=self.impl)  # the MoBA rules, defined once
        check(bad is None, *(bad or ("", "")))
        check(self.num_layers >= 1, "num_layers", f"must be >= 1, got {self.num_layers}")
        check(self.num_heads >= 1, "num_heads", f"must be >= 1, got {self.num_heads}")
        check(self.ffn_dim >= 1, "ffn_dim", f"must be >= 1, got {self.ffn_dim}")
        check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass
class HistoryConfig:
    """``model.history``: the user's behaviour sequence as tokens (``store_rec.models.history``).

    ``enabled``: off by default (no history key is read). ``max_len`` (N): history items kept per
    row, the most recent ones; rows are LEFT-padded to N so the newest item is last. ``item_tokens``:
    ``sid`` -> the K ``{column}_sid_k`` keys, K tokens per item; ``id`` -> the raw ``column`` key, one
    token per item. ``side``: aligned history side keys (e.g. ``hist_genre``, ``hist_gap``) whose
    embeddings are added to every token of their item. ``position``: add a learned
    position-from-newest embedding (0 = newest). ``column``: the history item list key (default: the
    dataset's history column whose ``history_of`` is the item feature). ``recent_blocks``: MoBA always
    selects the newest this many history blocks (they count toward ``topk``; 0 = the gate alone chooses).
    ``din`` reads the same tokens; the DLRM family (``dlrm``, ``dlrm_dcn``, ...) mean-pools the same
    keys in its EBC instead (``store_rec.models.tables``).
    """

    enabled: bool = False
    max_len: int = 64
    item_tokens: Literal["sid", "id"] = "sid"
    side: List[str] = field(default_factory=list)
    position: bool = True
    column: Optional[str] = None
    recent_blocks: int = 0

    def __post_init__(self) -> None:
        check(self.max_len >= 1, "max_len", f"must be >= 1, got {self.max_len}")
        check(self.recent_blocks >= 0, "recent_blocks", f"must be >= 0, got {self.recent_blocks}")
        check(len(set(self.side)) == len(self.side), "side", f"names a key twice: {self.side}")
        check(self.column is None or self.column not in self.side, "side", f"must not contain the item column {self.column!r}")


@dataclass
class OnlineSIDConfig:
    """``model.online`` (``sid_source: online``): tokenize the item's pooled embedding inside the model.

    ``tokenizer``: a tokenizer file from ``store-rec tokenize --save-model`` (its method must be
    ``model.tokenizer``, its input dim ``model.embedding_dim``). ``embeddings``: pre-trained item
    vectors (EMB.parquet, ``store-rec pretrain --dim <embedding_dim>``) that the train app loads into
    the sharded item table before the first step (not on resume: the checkpoint has the table).
    ``finetune``/``token_mode``/``aux_weight``: see ``store_rec.tokenizer.online.OnlineSIDTokenizer``.
    """

    tokenizer: Optional[str] = None
    embeddings: Optional[str] = None
    finetune: bool = False
    token_mode: Literal["codes", "latent"] = "codes"
    aux_weight: float = 1.0

    def __post_init__(self) -> None:
        check(self.aux_weight >= 0, "aux_weight", f"must be >= 0, got {self.aux_weight}")


@dataclass
class DCNConfig:
    num_layers: int = 3
    low_rank_dim: int = 16


@dataclass
class DeepFMConfig:
    hidden_layer_size: int = 64
    deep_fm_dimension: int = 16


@dataclass
class RankMixerConfig:
    num_layers: int = 2
    ffn_mult: int = 2


@dataclass
class DINConfig:
    """``model.din``: DIN's activation unit, ``MLP([h, q, h - q, h * q]) -> score`` (hidden sizes)."""

    attention_hidden: List[int] = field(default_factory=lambda: [64])

    def __post_init__(self) -> None:
        check(all(s >= 1 for s in self.attention_hidden), "attention_hidden",
              f"layer sizes must be >= 1, got {self.attention_hidden}")


@dataclass
class ModelConfig:
    """The ``model:`` section (see module docstring)."""

    name: Literal["store", "dlrm", "dlrm_dcn", "transformer", "deepfm", "rankmixer", "din"] = "store"
    embedding_dim: int = 16
    tokenizer: Literal["opmq", "rqvae", "opq", "none"] = "opmq"
    sid_source: Literal["batch", "online"] = "batch"
    item_feature: Optional[str] = None
    dense_arch: List[int] = field(default_factory=lambda: [64])
    over_arch: List[int] = field(default_factory=lambda: [64])
    rotation: RotationConfig = field(default_factory=RotationConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    online: OnlineSIDConfig = field(default_factory=OnlineSIDConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    dcn: DCNConfig = field(default_factory=DCNConfig)
    deepfm: DeepFMConfig = field(default_factory=DeepFMConfig)
    rankmixer: RankMixerConfig = field(default_factory=RankMixerConfig)
    din: DINConfig = field(default_factory=DINConfig)

    def __post_init__(self) -> None:
        check(
            self.embedding_dim >= 4 and self.embedding_dim % 4 == 0,
            "embedding_dim",
            f"must be a positive multiple of 4 (FBGEMM), got {self.embedding_dim}",
        )
        check(
            self.embedding_dim % self.attention.num_heads == 0,
            "attention.num_heads",
            f"must divide embedding_dim {self.embedding_dim}, got {self.attention.num_heads}",
        )
        check(all(s >= 1 for s in self.dense_arch), "dense_arch", f"layer sizes must be >= 1, got {self.dense_arch}")
        check(
            len(self.over_arch) >= 1 and all(s >= 1 for s in self.over_arch),
            "over_arch",
            f"needs >= 1 hidden size >= 1 (TorchRec's OverArch needs 2+ layers incl. the logit), got {self.over_arch}",
        )
        if self.name == "din":
            check(self.history.enabled, "history.enabled", "model.name 'din' attends over the history: set it true")
        if self.sid_source == "online":
            check(self.tokenizer != "none", "sid_source", "online SIDs need a tokenizer (opmq/rqvae/opq), not 'none'")
            check(self.item_feature is not None, "item_feature", "sid_source 'online' tokenizes this id feature: set it")
        h, a = self.history, self.attention
        if h.enabled and self.name == "store" and a.type == "moba":
            # the history routing: every query of a sample shares the selected history blocks
            check(a.routing == "instance", "attention.routing",
                  f"with model.history.enabled, MoBA routes history blocks per instance: set 'instance', got {a.routing!r}")
        if h.enabled and h.item_tokens == "sid":
            check(self.tokenizer != "none", "history.item_tokens",
                  "'sid' needs SID features (model.tokenizer is 'none'): use item_tokens: id")


C = TypeVar("C")


def as_config(cls: Type[C], value: Union[C, Mapping[str, Any], None], path: str) -> C:
    """``value`` as a ``cls`` instance: an instance as is, None as the defaults, a dict validated like the
    YAML section ``path`` (:func:`store_rec.config.from_dict`: ``ConfigError`` naming the key, e.g.
    ``rotation.diversity_weigth: unknown key``). Lets Python callers pass ``rotation={"schedule": "4:1"}``."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return from_dict(cls, value, path)
    raise ConfigError(f"{path}: expected a {cls.__name__} or a dict of its keys, got {type(value).__name__}")
