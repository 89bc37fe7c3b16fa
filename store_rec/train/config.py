"""``TrainConfig``: the YAML of ``store-rec train``, validated into dataclasses at start-up.

Every section is a dataclass checked by :func:`store_rec.config.from_dict`: an unknown key or a bad
value fails before any data is read, with the dotted key path in the message
(``configs/x.yaml: optim.sparse.type: 'sgd' is not one of ['adagrad', 'rowwise_adagrad']``).

Sections (every key optional except ``data.dir``)::

    data:      {dir, prepare_if_missing: {rows, items, users, seed, ...} | null, batch_size,
                eval_batch_size, sid_table, sid_feature, sid_tables: {FEATURE: SIDS.parquet}, sid_embedding,
                sid_hash_buckets, shuffle, drop_last, history_len}
                # batch_size / eval_batch_size are PER RANK: one step of a W-rank job consumes
                # batch_size x W samples (the global batch, logged at start-up and in the summary)
    model:     store_rec.models.config.ModelConfig
    optim:     {sparse: {type: adagrad|rowwise_adagrad|sgd|adam|rowwise_adam, lr, eps}, dense: {type: adam|adagrad, lr},
                weight_decay, warmup_steps, decay: none|linear|cosine, min_lr_ratio, schedule_sparse_lr,
                rotation: {lr, type: adam|sgd}}   # rotation steps follow model.rotation.schedule
    train:     {epochs, max_steps, eval_every, eval_at_epoch_end, early_stop_patience, seed,
                log_every, eval_splits, epoch_end_splits, eval_auc, eval_auc_bins, eval_item_slices, precision, compile,
                profile_steps, profile_skip}
    sharding:  {plan_file, sharding_types, compute_kernels, tables: {t_<feature>: {sharding_types,
                compute_kernels}}, storage_reservation, qcomms: {forward, backward}}
    checkpoint:{enabled, dir, every_steps, keep}
    output:    {dir, metrics_out, tensorboard, progress_bar}
    loss:      {aux_weights: {diversity: 0.1, sid_recon: ...}}  # per key, over the model's own weights
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional

from store_rec.config import check
from store_rec.distributed.sharding_types import SHARDING_TYPES
from store_rec.models.config import ModelConfig

COMPUTE_KERNELS = ("dense", "fused", "fused_uvm", "fused_uvm_caching", "key_value")

logger = logging.getLogger(__name__)


@dataclass
class SyntheticConfig:
    """``data.prepare_if_missing``: arguments of :func:`store_rec.data.synthetic.prepare_synthetic`."""

    rows: int = 20_000
    items: int = 2_000
    users: int = 500
    seed: int = 0
    num_clusters: int = 16
    params: Dict[str, Any] = field(default_factory=dict)  # any other DEFAULTS key of the generator

    def __post_init__(self) -> None:
        check(self.rows >= 10, "rows", f"must be >= 10, got {self.rows}")
        check(self.items >= 1, "items", f"must be >= 1, got {self.items}")
        check(self.users >= 1, "users", f"must be >= 1, got {self.users}")
        check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")


@dataclass
class DataConfig:
    """``data:``. ``batch_size`` and ``eval_batch_size`` are per rank: the global batch of a step is
    ``batch_size x world size`` (what LR and warm-up are tuned for; the trainer logs it and writes it to
    the summary as ``global_batch_size``), and an epoch has ``ceil(rows / global batch)`` steps."""

    dir: str
    prepare_if_missing: Optional[SyntheticConfig] = None
    batch_size: int = 256  # per rank
    eval_batch_size: int = 1024  # per rank
    sid_table: Optional[str] = None
    sid_feature: Optional[str] = None
    # {id feature: SID table}: several tokenized features, keys {feature}_sid_k (store_rec.data.feature_sids)
    sid_tables: Dict[str, str] = field(default_factory=dict)
    # which embedding ids the SIDs become (store_rec.data.sid_keys): position (one table per SID
    # position), prefix_ngram (one per prefix (s_0..s_k), Singh et al. 2023), tuple_hash (positions +
    # the full tuple); prefixes beyond sid_hash_buckets ids are hashed into that many
    sid_embedding: Literal["position", "prefix_ngram", "tuple_hash"] = "position"
    sid_hash_buckets: int = 1 << 18
    shuffle: bool = True
    drop_last: bool = False
    # history lists (role history): null = as prepared, n >= 1 = the n newest, 0 = no history keys
    history_len: Optional[int] = None

    def __post_init__(self) -> None:
        check(bool(self.dir), "dir", "must be a dataset directory")
        check(self.history_len is None or self.history_len >= 0, "history_len",
              f"must be >= 0 (0 = no history) or null (as prepared), got {self.history_len}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.eval_batch_size >= 1, "eval_batch_size", f"must be >= 1, got {self.eval_batch_size}")
        for f, p in self.sid_tables.items():
            check(bool(f) and bool(p), f"sid_tables.{f}", "needs an id feature name and a SID table path")
            check(f != self.sid_feature, f"sid_tables.{f}", "is data.sid_feature, already tokenized by data.sid_table")
        check(self.sid_hash_buckets >= 2, "sid_hash_buckets", f"must be >= 2, got {self.sid_hash_buckets}")


def ensure_data_dir(data: DataConfig, *, generate: bool = True) -> Path:
    """``data.dir``, generated from ``data.prepare_if_missing`` when it has no ``schema.json``.

    Shared by ``store-rec train`` (rank 0 generates, the others pass ``generate=False`` and wait at a
    barrier) and ``store-rec plan`` (no process group), so both produce identical data. Raises
    ``UserError`` when the directory has no schema.json and nothing says how to make it."""
    from store_rec.errors import UserError

    d = Path(data.dir)
    if (d / "schema.json").exists():
        return d
    p = data.prepare_if_missing
    if p is None:
        raise UserError(f"data.dir: {d} has no schema.json (prepare it with `store-rec data prepare ... --out {d}`, "
                        "or set data.prepare_if_missing)")
    if generate:
        from store_rec.data.synthetic import prepare_synthetic

        logger.info("data.dir %s has no schema.json: preparing synthetic data from data.prepare_if_missing (%d rows)", d, p.rows)
        prepare_synthetic(d, rows=p.rows, items=p.items, users=p.users, seed=p.seed, num_clusters=p.num_clusters, **p.params)
    return d


@dataclass
class SparseOptimConfig:
    # fused in the TBE kernels (fbgemm EmbOptimType): adagrad (EXACT_ADAGRAD), rowwise_adagrad
    # (EXACT_ROWWISE_ADAGRAD), sgd (EXACT_SGD), adam (ADAM), rowwise_adam (PARTIAL_ROWWISE_ADAM: Adam's
    # first moment per element, second moment per row -- the memory of row-wise Adagrad plus one copy)
    type: Literal["adagrad", "rowwise_adagrad", "sgd", "adam", "rowwise_adam"] = "rowwise_adagrad"
    lr: float = 0.05
    eps: float = 1e-8

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")


@dataclass
class DenseOptimConfig:
    type: Literal["adam", "adagrad"] = "adam"
    lr: float = 1e-3

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")


@dataclass
class RotationOptimConfig:
    """Optimizer of the rotation parameters; which steps it runs on is ``model.rotation.schedule``."""

    type: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")


@dataclass
class OptimConfig:
    sparse: SparseOptimConfig = field(default_factory=SparseOptimConfig)
    dense: DenseOptimConfig = field(default_factory=DenseOptimConfig)
    rotation: RotationOptimConfig = field(default_factory=RotationOptimConfig)
    weight_decay: float = 0.0  # dense parameters only
    warmup_steps: int = 0  # linear warm-up of the dense, rotation (and sparse, see below) LRs
    decay: Literal["none", "linear", "cosine"] = "none"  # after warm-up, to min_lr_ratio * lr at the last step
    min_lr_ratio: float = 0.0
    schedule_sparse_lr: bool = True  # the embedding tables' (fused) LR follows the same warm-up/decay

    def __post_init__(self) -> None:
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")


@dataclass
class LoopConfig:
    """``train:`` section."""

    epochs: int = 1
    max_steps: Optional[int] = None  # stop after this many optimizer steps (over all epochs)
    eval_every: int = 0  # evaluate on valid every N steps (0: only at epoch ends)
    eval_at_epoch_end: bool = True
    early_stop_patience: int = 0  # stop after N evals without a better valid AUC (0: off)
    seed: int = 0
    log_every: int = 50
    eval_splits: List[str] = field(default_factory=lambda: ["valid", "test"])  # final evaluation
    # evaluated at every epoch end (with eval_at_epoch_end); valid drives early stop and "best"
    epoch_end_splits: List[str] = field(default_factory=lambda: ["valid"])
    # AUC of an eval: exact (rows gathered on rank 0 only) or histogram (all-reduced counts, O(bins)
    # memory, reported with its error bound auc_error_bound); see store_rec.train.metrics.EvalMetrics
    eval_auc: Literal["exact", "histogram"] = "exact"
    eval_auc_bins: int = 65536
    # every eval also reports the AUC of cold / warm target items (an item is warm when it has a train
    # positive; store_rec.data.slices), for datasets with an item feature
    eval_item_slices: bool = True
    # speed options (docs/OPERATIONS.md): bf16 autocasts the dense part (interaction, MLPs; the embedding
    # lookups and the loss stay fp32) in training and evaluation; compile torch.compiles the dense part
    # (falls back to eager, with a warning, where it fails); profile_steps > 0 writes a torch.profiler
    # trace of that many training steps (after profile_skip steps) per rank to <output.dir>/profile/
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    profile_steps: int = 0
    profile_skip: int = 5

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        check(self.max_steps is None or self.max_steps >= 1, "max_steps", f"must be >= 1, got {self.max_steps}")
        check(self.eval_every >= 0, "eval_every", f"must be >= 0, got {self.eval_every}")
        check(self.early_stop_patience >= 0, "early_stop_patience", f"must be >= 0, got {self.early_stop_patience}")
        check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        check(self.log_every >= 1, "log_every", f"must be >= 1, got {self.log_every}")
        check(self.eval_auc_bins >= 2, "eval_auc_bins", f"must be >= 2, got {self.eval_auc_bins}")
        check(self.profile_steps >= 0, "profile_steps", f"must be >= 0, got {self.profile_steps}")
        check(self.profile_skip >= 0, "profile_skip", f"must be >= 0, got {self.profile_skip}")
        for i, s in enumerate(self.eval_splits):
            check(s in ("train", "valid", "test"), f"eval_splits[{i}]", f"{s!r} is not one of train/valid/test")
        for i, s in enumerate(self.epoch_end_splits):
            check(s in ("train", "valid", "test"), f"epoch_end_splits[{i}]", f"{s!r} is not one of train/valid/test")


@dataclass
class TableShardingConfig:
    sharding_types: Optional[List[str]] = None
    compute_kernels: Optional[List[str]] = None

    def __post_init__(self) -> None:
        _check_kinds(self.sharding_types, self.compute_kernels)


def _check_kinds(sharding_types: Optional[List[str]], kernels: Optional[List[str]]) -> None:
    for i, s in enumerate(sharding_types or []):
        check(s in SHARDING_TYPES, f"sharding_types[{i}]", f"{s!r} is not one of {list(SHARDING_TYPES)}")
    for i, k in enumerate(kernels or []):
        check(k in COMPUTE_KERNELS, f"compute_kernels[{i}]", f"{k!r} is not one of {list(COMPUTE_KERNELS)}")


@dataclass
class QCommsSection:
    """``sharding.qcomms: {forward: fp16, backward: bf16}`` (``fp32`` = not quantized)."""

    forward: Literal["fp32", "fp16", "bf16", "fp8"] = "fp16"
    backward: Literal["fp32", "fp16", "bf16", "fp8"] = "bf16"


@dataclass
class ShardingConfig:
    """``sharding:``: a saved plan (``store-rec plan``), or planner constraints.

    ``sharding_types`` / ``compute_kernels`` apply to every table; ``tables.<t_feature>`` override them
    per table (each key given there replaces the global one). On CPU: data_parallel / table_wise /
    column_wise / table_column_wise (the planner's default search there), and row_wise / table_row_wise
    when asked for (docs/ROW_WISE_CPU.md); grid_shard needs CUDA."""

    plan_file: Optional[str] = None
    sharding_types: Optional[List[str]] = None
    compute_kernels: Optional[List[str]] = None
    tables: Dict[str, TableShardingConfig] = field(default_factory=dict)
    # share of each rank's memory the planner keeps free for the dense model and activations (TorchRec's
    # FixedPercentageStorageReservation; its default percentage)
    storage_reservation: float = 0.15
    # quantized embedding comms (TorchRec QCommsConfig: all-to-all / reduce-scatter payloads of sharded
    # tables in fp16 / bf16 / fp8); fbgemm's codecs need CUDA + NCCL, refused on CPU / gloo
    qcomms: Optional[QCommsSection] = None

    def __post_init__(self) -> None:
        _check_kinds(self.sharding_types, self.compute_kernels)
        check(0.0 <= self.storage_reservation < 1.0, "storage_reservation", f"must be in [0, 1), got {self.storage_reservation}")


@dataclass
class CheckpointConfig:
    """``checkpoint:``. When enabled, a checkpoint is written every ``every_steps`` optimizer steps (0:
    none mid-epoch), at every epoch end and at the last step; ``keep`` newest ones are kept."""

    enabled: bool = True
    dir: Optional[str] = None  # default: <output.dir>/checkpoints
    every_steps: int = 0
    keep: int = 2

    def __post_init__(self) -> None:
        check(self.every_steps >= 0, "every_steps", f"must be >= 0, got {self.every_steps}")
        check(self.keep >= 1, "keep", f"must be >= 1, got {self.keep}")


@dataclass
class OutputConfig:
    dir: str = "runs/train"
    metrics_out: Optional[str] = None  # final JSON summary (default <dir>/summary.json)
    tensorboard: bool = True
    # a tqdm bar on rank 0 when stderr is a terminal; otherwise (slurm .out, torchx logs, pipes) or with
    # false, one log line every train.log_every steps instead
    progress_bar: bool = True


@dataclass
class LossConfig:
    """``loss.aux_weights``: weight of auxiliary losses the model returns (e.g. ``diversity``,
    ``sid_recon``). Each key given overrides the model's own weight of that loss
    (``model.aux_loss_weights()``: ``diversity`` from ``model.rotation``, 1 for every ``sid_<name>``
    loss of a fine-tuned online tokenizer); the others keep the model's weight. 0 drops a loss."""

    aux_weights: Optional[Dict[str, float]] = None

    def __post_init__(self) -> None:
        for k, v in (self.aux_weights or {}).items():
            check(v >= 0, f"aux_weights.{k}", f"must be >= 0, got {v}")


@dataclass
class TrainConfig:
    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    loss: LossConfig = field(default_factory=LossConfig)


def load_train_config(path, overrides=()) -> TrainConfig:  # noqa: ANN001
    """YAML file + ``key=value`` overrides -> validated :class:`TrainConfig` (ConfigError names the key)."""
    from store_rec.config import load_config

    return load_config(TrainConfig, path, overrides)
