"""Offline sharding plans with TorchRec's ``EmbeddingShardingPlanner``: no process group, no GPUs.

A CPU laptop plans for 1024 GPUs: the tables become an ``EmbeddingBagCollection`` on the **meta**
device (no memory), the cluster is an explicit ``Topology`` (:func:`store_rec.distributed.topology.
make_topology`), and ``planner.plan(module, sharders)`` runs locally (``collective_plan`` would need a
process group to broadcast the plan).

Storage reservation: ``FixedPercentageStorageReservation`` (default 15% of each rank's HBM/DDR kept
for dense parameters, activations and KJTs). TorchRec's default ``HeuristicalStorageReservation``
measures the dense part of the module it is given and in dry runs over-estimates it; with a bare EBC
it would also reserve nothing for the real dense model. A fixed percentage is explicit, the same for
every world size, and shown in the outputs.

Table statistics: rows and dims come from the model's tables (``store_rec.models.tables.
embedding_tables``); pooling factors (mean ids per sample per feature) are measured from the prepared
dataset's train parquet (:func:`measure_pooling_factors`) or given in the ``plan:`` config section,
and reach the cost model as ``ParameterConstraints(pooling_factors=[...])``.

Strategies: ``auto`` (TorchRec chooses sharding types and kernels), or one forced sharding type for
every table (``data_parallel``, ``table_wise``, ``row_wise``, ``column_wise``, ``table_row_wise``,
``table_column_wise``, ``grid_shard``), optionally with a forced compute kernel; per-table overrides in
``plan.tables.<table>`` win over both.

Synthetic industrial table sets (:func:`synthetic_tables`) are for planning only.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Literal, Optional, Sequence

from store_rec.config import check
from store_rec.distributed.sharding_types import CPU_SHARDING_TYPES, SHARDING_TYPES, TORCHREC_CPU_SHARDING_TYPES
from store_rec.distributed.topology import GB, TopologySpec, make_topology
from store_rec.errors import UserError

logger = logging.getLogger(__name__)

STRATEGIES = ("auto", *SHARDING_TYPES)
TORCHREC_CPU_STRATEGIES = TORCHREC_CPU_SHARDING_TYPES
"""Sharding types TorchRec itself offers for compute_device cpu."""
CPU_STRATEGIES = CPU_SHARDING_TYPES
"""What store_rec plans and runs on cpu/gloo: TorchRec's four plus row-wise through
:class:`store_rec.distributed.cpu_row_wise.CpuRowWiseEBCSharder` (see docs/ROW_WISE_CPU.md)."""
KERNELS = ("dense", "fused", "fused_uvm", "fused_uvm_caching", "quant", "key_value")
STATS_LOGGER = "torchrec.distributed.planner.stats"


# --------------------------------------------------------------------------------------- config
@dataclass
class PlanningError(UserError):
    """TorchRec's planner found no plan; ``kind`` is its PlannerErrorType value (e.g. ``insufficient_storage``)."""

    def __init__(self, message: str, kind: str = "other") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class TableOverride:
    """``plan.tables.<table name>``: constraints for one table (win over the run's strategy/kernel)."""

    sharding_types: Optional[List[str]] = None
    compute_kernels: Optional[List[str]] = None
    pooling_factor: Optional[float] = None
    min_partition: Optional[int] = None  # smallest column-wise shard dim

    def __post_init__(self) -> None:
        for st in self.sharding_types or []:
            check(st in STRATEGIES[1:], "sharding_types", f"{st!r} is not one of {list(STRATEGIES[1:])}")
        for k in self.compute_kernels or []:
            check(k in KERNELS, "compute_kernels", f"{k!r} is not one of {list(KERNELS)}")
        check(self.pooling_factor is None or self.pooling_factor > 0, "pooling_factor", f"must be > 0, got {self.pooling_factor}")
        check(self.min_partition is None or (self.min_partition >= 4 and self.min_partition % 4 == 0), "min_partition", f"must be a multiple of 4 >= 4, got {self.min_partition}")


@dataclass
class SyntheticTablesConfig:
    """``plan.synthetic``: an industrial-looking table set (see :func:`synthetic_tables`)."""

    num_tables: int = 0
    rows_scale: float = 1.0  # multiplies every table's rows (max table = 1e9 * rows_scale)
    max_rows: int = 1_000_000_000
    min_rows: int = 1_000
    zipf: float = 1.1  # table-size skew: rows of the i-th largest table ~ i ** -zipf
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.num_tables >= 0, "num_tables", f"must be >= 0, got {self.num_tables}")
        check(self.rows_scale > 0, "rows_scale", f"must be > 0, got {self.rows_scale}")
        check(1 <= self.min_rows <= self.max_rows, "min_rows", f"must be in [1, max_rows={self.max_rows}], got {self.min_rows}")
        check(self.zipf > 0, "zipf", f"must be > 0, got {self.zipf}")


@dataclass
class PlanConfig:
    """The ``plan:`` config section (every key optional).

    YAML example::

        plan:
          storage_reservation: 0.15     # fraction of HBM/DDR per rank kept for dense model + activations
          pooling_factors: {site_id: 1.0, tags: 7.5}   # given instead of measured (feature -> mean ids/sample)
          pooling_sample_rows: 200000   # rows of train parquet read to measure pooling factors
          tables:                       # per-table overrides (table name t_<feature>)
            t_device_ip: {sharding_types: [row_wise], compute_kernels: [fused_uvm_caching]}
          proposer: auto                # auto (by problem size, see choose_proposer) | default (TorchRec's 4) | greedy | uniform
          timeout_s: null               # stop searching after this many seconds (best plan so far)
          fast_planner: true            # skip planner work that does not change the plan (identical results, faster)
          synthetic: {num_tables: 0, rows_scale: 1.0}
    """

    storage_reservation: float = 0.15
    pooling_factors: Dict[str, float] = field(default_factory=dict)
    pooling_sample_rows: int = 200_000
    tables: Dict[str, TableOverride] = field(default_factory=dict)
    proposer: Literal["auto", "default", "greedy", "uniform"] = "auto"
    timeout_s: Optional[int] = None
    fast_planner: bool = True  # skip TorchRec planner work that does not change the plan (see fast_planner())
    auto_defaults: Optional[TableOverride] = None  # constraints for every table in --strategy auto runs
    synthetic: SyntheticTablesConfig = field(default_factory=SyntheticTablesConfig)

    def __post_init__(self) -> None:
        check(0.0 <= self.storage_reservation < 1.0, "storage_reservation", f"must be in [0, 1), got {self.storage_reservation}")
        check(self.pooling_sample_rows >= 1, "pooling_sample_rows", f"must be >= 1, got {self.pooling_sample_rows}")
        check(self.timeout_s is None or self.timeout_s >= 1, "timeout_s", f"must be >= 1, got {self.timeout_s}")
        for k, v in self.pooling_factors.items():
            check(v > 0, f"pooling_factors.{k}", f"must be > 0, got {v}")


# --------------------------------------------------------------------------------------- tables
def table_fingerprint(tables: Sequence[Any]) -> List[Dict[str, Any]]:
    """``[{name, rows, dim, features}]`` of EmbeddingBagConfigs (what a saved plan is checked against)."""
    return [
        {"name": t.name, "rows": int(t.num_embeddings), "dim": int(t.embedding_dim), "features": list(t.feature_names)}
        for t in tables
    ]


def synthetic_tables(cfg: SyntheticTablesConfig) -> List[Any]:
    """An industrial-looking set of ``cfg.num_tables`` EmbeddingBagConfigs, for planning only.

    Generator (seeded, deterministic):

    * rows: the i-th largest table (i = 1..N) has ``max_rows * rows_scale * i ** -zipf`` rows, times a
      log-normal jitter (sigma 0.3), clipped to ``[min_rows, max_rows * rows_scale]``: a few tables with
      ~1e9 rows (user / item / query ids), a long tail of small ones (countries, device types).
      With the defaults and 200 tables the set has ~5-6 billion rows.
    * dim: 128 for the largest 5% of tables, 64 for the next 25%, 32 for the next 40%, 16 for the rest.
    * pooling factor: 70% single-valued (1.0); 30% multi-hot with a log-normal mean (median 8 ids).
      Stored as ``EmbeddingBagConfig`` names ``t_syn_<i>`` / features ``syn_<i>``; the pooling factors
      are returned by :func:`synthetic_pooling_factors`.
    """
    import numpy as np
    from torchrec.modules.embedding_configs import EmbeddingBagConfig

    rng = np.random.default_rng(cfg.seed)
    n = cfg.num_tables
    hi = cfg.max_rows * cfg.rows_scale
    out = []
    for i in range(n):
        base = hi * (i + 1) ** (-cfg.zipf) * float(np.exp(rng.normal(0.0, 0.3)))
        rows = int(min(max(base, cfg.min_rows), hi))
        q = i / max(n, 1)
        dim = 128 if q < 0.05 else 64 if q < 0.30 else 32 if q < 0.70 else 16
        out.append(EmbeddingBagConfig(name=f"t_syn_{i}", embedding_dim=dim, num_embeddings=max(rows, 1), feature_names=[f"syn_{i}"]))
    return out


def synthetic_pooling_factors(cfg: SyntheticTablesConfig) -> Dict[str, float]:
    """Feature -> mean ids per sample for :func:`synthetic_tables` (same seed, see its docstring)."""
    import numpy as np

    rng = np.random.default_rng(cfg.seed + 1)
    out = {}
    for i in range(cfg.num_tables):
        multi = rng.random() < 0.3
        pf = float(np.exp(rng.normal(math.log(8.0), 0.8))) if multi else 1.0
        out[f"syn_{i}"] = round(max(pf, 1.0), 3)
    return out


def measure_pooling_factors(data_dir: Path, features: Sequence[str], max_rows: int = 200_000) -> Dict[str, float]:
    """Mean ids per sample of each sparse feature, from the first ``max_rows`` rows of the train split.

    int64 columns count 1 per row (id 0 = OOV is still a lookup); ``list<int64>`` columns count their
    list length (null = 0). Features not in the parquet (e.g. ``sid_*`` attached by the loader) are
    left out: the caller uses 1.0 for them.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    files = sorted((Path(data_dir) / "train").glob("*.parquet"))
    if not files:
        raise UserError(f"{data_dir}/train: no parquet files to measure pooling factors from")
    sums: Dict[str, float] = {}
    rows = 0
    for f in files:
        pf = pq.ParquetFile(f)
        cols = [c for c in features if c in pf.schema_arrow.names]
        for batch in pf.iter_batches(batch_size=65_536, columns=cols):
            take = min(batch.num_rows, max_rows - rows)
            batch = batch.slice(0, take)
            for c in cols:
                col = batch.column(c)
                if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
                    n = pc.sum(pc.fill_null(pc.list_value_length(col), 0)).as_py() or 0
                else:
                    n = take
                sums[c] = sums.get(c, 0.0) + float(n)
            rows += take
            if rows >= max_rows:
                break
        if rows >= max_rows:
            break
    if rows == 0:
        raise UserError(f"{data_dir}/train: no rows to measure pooling factors from")
    return {c: round(s / rows, 4) for c, s in sums.items()}


# --------------------------------------------------------------------------------------- results
@dataclass
class RankUsage:
    """Per-rank totals over the shards a plan places on one rank (storage in GB, times in ms)."""

    rank: int
    hbm_gb: float = 0.0
    ddr_gb: float = 0.0
    fwd_compute_ms: float = 0.0
    fwd_comms_ms: float = 0.0
    bwd_compute_ms: float = 0.0
    bwd_comms_ms: float = 0.0
    input_dist_ms: float = 0.0
    prefetch_ms: float = 0.0
    num_shards: int = 0

    @property
    def total_ms(self) -> float:
        """TorchRec's ``Perf.total``: fwd/bwd compute + comms + prefetch (input dist is reported apart)."""
        return self.fwd_compute_ms + self.fwd_comms_ms + self.bwd_compute_ms + self.bwd_comms_ms + self.prefetch_ms


@dataclass
class PlanResult:
    """One planner run: the plan, TorchRec's stats table, and our per-rank figures."""

    strategy: str
    kernel: Optional[str]
    topology: TopologySpec
    tables: List[Any]  # EmbeddingBagConfig
    sharding_plan: Any  # torchrec ShardingPlan
    sharding_options: List[Any]  # torchrec ShardingOption (best plan, with shards and perf)
    ranks: List[RankUsage]
    stats_text: str
    planning_time_s: float
    storage_reservation: float
    pooling_factors: Dict[str, float]
    proposer: str = "default"  # the proposer(s) that searched (after ``auto`` was resolved)

    @property
    def world_size(self) -> int:
        return self.topology.world_size

    def summary(self) -> Dict[str, Any]:
        """Flat record for the comparison table (times ms, memory GB)."""
        tot = [r.total_ms for r in self.ranks]
        hbm = [r.hbm_gb for r in self.ranks]
        ddr = [r.ddr_gb for r in self.ranks]
        mean = lambda xs: sum(xs) / max(len(xs), 1)  # noqa: E731
        ratio = lambda xs: (max(xs) / mean(xs)) if mean(xs) > 0 else 1.0  # noqa: E731
        worst = max(self.ranks, key=lambda r: r.total_ms)
        types: Dict[str, int] = {}
        for so in self.sharding_options:
            types[so.sharding_type] = types.get(so.sharding_type, 0) + 1
        return {
            "world_size": self.world_size,
            "strategy": self.strategy,
            "kernel": self.kernel or "auto",
            "proposer": self.proposer,
            "sharding_types": ",".join(f"{k}:{v}" for k, v in sorted(types.items())),
            "step_time_ms": round(max(tot), 4),
            "fwd_compute_ms": round(worst.fwd_compute_ms, 4),
            "fwd_comms_ms": round(worst.fwd_comms_ms, 4),
            "bwd_compute_ms": round(worst.bwd_compute_ms, 4),
            "bwd_comms_ms": round(worst.bwd_comms_ms, 4),
            "input_dist_ms": round(worst.input_dist_ms, 4),
            "peak_hbm_gb": round(max(hbm), 4),
            "peak_ddr_gb": round(max(ddr), 4),
            "perf_imbalance": round(ratio(tot), 4),
            "hbm_imbalance": round(ratio(hbm), 4),
            "ddr_imbalance": round(ratio(ddr), 4),
            "planning_time_s": round(self.planning_time_s, 3),
        }


def rank_usage(sharding_options: Sequence[Any], world_size: int) -> List[RankUsage]:
    """Sum storage and perf of every shard per rank (from the planner's ShardingOption objects)."""
    ranks = [RankUsage(rank=r) for r in range(world_size)]
    for so in sharding_options:
        for shard in so.shards:
            if shard.rank is None or shard.rank < 0:
                continue
            u = ranks[shard.rank]
            u.num_shards += 1
            if shard.storage is not None:
                u.hbm_gb += shard.storage.hbm / GB
                u.ddr_gb += shard.storage.ddr / GB
            p = shard.perf
            if p is not None:
                u.fwd_compute_ms += p.fwd_compute
                u.fwd_comms_ms += p.fwd_comms
                u.bwd_compute_ms += p.bwd_compute
                u.bwd_comms_ms += p.bwd_comms
                u.input_dist_ms += getattr(p, "input_dist_comms", 0.0)
                u.prefetch_ms += getattr(p, "prefetch_compute", 0.0)
    return ranks


# --------------------------------------------------------------------------------------- planning
class _SearchSpaceCopyShim:
    """Stands in for the ``copy`` module inside ``torchrec.distributed.planner.enumerators`` (see
    :func:`fast_planner`): a list of ShardingOptions is copied shallowly, anything else deeply."""

    @staticmethod
    def deepcopy(x: Any, memo: Any = None) -> Any:
        import copy

        from torchrec.distributed.planner.types import ShardingOption

        if isinstance(x, list) and x and isinstance(x[0], ShardingOption):
            return list(x)
        return copy.deepcopy(x, memo)


def _copy_flat(x: Any) -> Any:
    """Copy of a Perf / Storage (dataclasses of numbers): a shallow copy is a deep copy."""
    if x is None:
        return None
    out = object.__new__(type(x))
    out.__dict__.update(x.__dict__)
    return out


def copy_sharding_options(options: List[Any], memo: Optional[Dict[int, Any]] = None) -> List[Any]:
    """``copy.deepcopy(options)`` for a list of TorchRec ``ShardingOption``s, ~10x faster.

    Same result as ``ShardingOption.__deepcopy__`` (module and tensor shared, everything else copied),
    but each ``Shard`` (lists of ints, a ``Storage`` and a ``Perf`` of numbers, an int rank) is rebuilt
    directly instead of through ``copy``'s generic reconstruction; any other shard type goes through
    ``copy.deepcopy``. ``tests/test_plan.py`` compares it with ``copy.deepcopy``.
    """
    import copy

    from torchrec.distributed.planner.types import Perf, Shard, Storage

    memo = {} if memo is None else memo
    flat = (Perf, Storage, type(None))
    out = []
    for so in options:
        new = object.__new__(type(so))
        for k, v in so.__dict__.items():
            if k in ("_tensor", "_module"):
                new.__dict__[k] = v
            elif k == "shards":
                shards = []
                for sh in v:
                    if type(sh) is Shard and type(sh.storage) in flat and type(sh.perf) in flat:
                        shards.append(Shard(size=list(sh.size), offset=list(sh.offset), storage=_copy_flat(sh.storage), perf=_copy_flat(sh.perf), rank=sh.rank))
                    else:  # pragma: no cover - a Shard subclass or a new field type
                        shards.append(copy.deepcopy(sh, memo))
                new.__dict__[k] = shards
            else:
                new.__dict__[k] = copy.deepcopy(v, memo)
        out.append(new)
    return out


class _PlanCopyShim:
    """Stands in for ``copy`` inside ``torchrec.distributed.planner.planners``: the planner deep-copies
    every better plan it finds (``best_plan = copy.deepcopy(plan)``); a list of ShardingOptions is
    copied by :func:`copy_sharding_options`, anything else by ``copy``."""

    @staticmethod
    def deepcopy(x: Any, memo: Any = None) -> Any:
        import copy

        from torchrec.distributed.planner.types import ShardingOption

        if isinstance(x, list) and x and all(isinstance(so, ShardingOption) for so in x):
            return copy_sharding_options(x, memo)
        return copy.deepcopy(x, memo)

    @staticmethod
    def copy(x: Any) -> Any:
        import copy

        return copy.copy(x)


class _LastPerf:
    """The most recent (evaluator, context, config) -> Perf of :class:`_RepeatedShardEvaluator`."""

    __slots__ = ("key", "ctx", "perf")

    def __init__(self) -> None:
        self.key: Any = None
        self.ctx: Any = None
        self.perf: Any = None


class _RepeatedShardEvaluator:
    """Wraps a TorchRec ``EmbeddingShardingPerfEvaluator``: a shard whose ``ShardPerfContext`` equals
    the previous shard's (same evaluator and config) gets a copy of that shard's ``Perf`` instead of a
    recomputation. See :func:`fast_planner` (3)."""

    def __init__(self, inner: Any, last: _LastPerf) -> None:
        self._inner = inner
        self._last = last

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def compute_perf(self, ctx: Any, config: Any) -> Any:
        last = self._last
        key = (id(self._inner), id(config))
        if last.key == key and last.ctx == ctx:
            return _copy_flat(last.perf)
        perf = self._inner.compute_perf(ctx=ctx, config=config)
        last.key, last.ctx, last.perf = key, ctx, _copy_flat(perf)
        return perf


@contextlib.contextmanager
def fast_planner(enabled: bool = True) -> Iterator[None]:
    """Remove four costs of TorchRec's planner that do not change its result (one ``plan()`` call).

    1. ``estimator.annotations._get_annotated_method`` / ``_get_coefficient_method`` scan
       ``dir(config)`` on every call (hundreds of thousands of calls for 200 tables x 1024 ranks).
       Which method they find depends only on the config's class and instance attribute names, the
       marker attribute and the sharding type: we cache the *attribute name* found under that key and
       return ``getattr(config, name)`` -- the same bound method the scan returns.
    2. ``EmbeddingEnumerator.enumerate`` deep-copies the whole search space (every ShardingOption with
       all its shards: ~45% of the time at 1024 ranks) to cache it for a second ``enumerate`` of the
       same module, which only plan loading/hashing (``plan_loader``) reads. We plan once per planner
       and use no plan loader, so a shallow list copy is stored instead.
    3. The perf estimator computes every shard of every ShardingOption separately: a row-wise option at
       1024 ranks is 1024 shards, all but the last of the same size, i.e. 1024 identical computations.
       ``compute_perf(ctx, config)`` reads only its (dataclass) ``ShardPerfContext`` and the hardware
       config, so a shard whose context *equals* the previous shard's gets a copy of that ``Perf``
       (~75% of the estimator's work at 256 ranks).
    4. ``EmbeddingShardingPlanner.plan`` deep-copies every better plan it finds; at 1024 ranks that is
       200k shards per copy through ``copy``'s generic reconstruction. :func:`copy_sharding_options`
       builds the same copy directly.

    Off (``enabled=False``) = TorchRec's own code path; ``tests/test_plan.py`` checks both give
    identical plans, shards and perf estimates.
    """
    if not enabled:
        yield
        return
    try:
        from torchrec.distributed.planner import enumerators as enum_mod
        from torchrec.distributed.planner.estimator import annotations as ann
    except ImportError:  # pragma: no cover - other torchrec versions: nothing to speed up
        yield
        return
    originals = {n: getattr(ann, n, None) for n in ("_get_annotated_method", "_get_coefficient_method")}
    if any(v is None for v in originals.values()) or getattr(enum_mod, "copy", None) is None:  # pragma: no cover
        yield
        return

    def memo(orig):
        cache: Dict[Any, Optional[str]] = {}

        def lookup(config: Any, attr: str, sharding_type: Optional[str] = None):
            key = (type(config), tuple(sorted(getattr(config, "__dict__", {}))), attr, sharding_type)
            if key not in cache:
                found = orig(config, attr, sharding_type)
                cache[key] = getattr(found, "__name__", None) if found is not None else None
                if found is not None and getattr(config, cache[key], None) != found:  # not re-findable by name
                    cache[key] = "\0"
                return found
            name = cache[key]
            if name == "\0":
                return orig(config, attr, sharding_type)
            return None if name is None else getattr(config, name)

        return lookup

    copy_mod = enum_mod.copy
    try:
        from torchrec.distributed.planner.estimator import estimator as est_mod
    except ImportError:  # pragma: no cover
        est_mod = None
    from torchrec.distributed.planner import planners as planners_mod

    get_evaluator = getattr(est_mod, "get_embedding_perf_sharding_evaluator", None)
    planners_copy = getattr(planners_mod, "copy", None)
    try:
        for n, f in originals.items():
            setattr(ann, n, memo(f))
        enum_mod.copy = _SearchSpaceCopyShim  # type: ignore[assignment]
        if planners_copy is not None:
            planners_mod.copy = _PlanCopyShim  # type: ignore[assignment]
        if get_evaluator is not None:
            last = _LastPerf()
            est_mod.get_embedding_perf_sharding_evaluator = lambda *a, **k: _RepeatedShardEvaluator(get_evaluator(*a, **k), last)
        yield
    finally:
        for n, f in originals.items():
            setattr(ann, n, f)
        enum_mod.copy = copy_mod
        if planners_copy is not None:
            planners_mod.copy = planners_copy
        if get_evaluator is not None:
            est_mod.get_embedding_perf_sharding_evaluator = get_evaluator


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


@contextlib.contextmanager
def capture_planner_stats() -> Iterator[io.StringIO]:
    """Collect what ``EmbeddingStats`` logs (INFO on ``torchrec.distributed.planner.stats``) into a buffer,
    without echoing it to the console."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(message)s"))
    lg = logging.getLogger(STATS_LOGGER)
    old = (lg.level, lg.propagate)
    lg.setLevel(logging.INFO)
    lg.propagate = False
    lg.addHandler(handler)
    # validate_rank_assignment logs "Sharding spec not found for <table>" on the root logger for every
    # data_parallel table (they have no sharding spec by design): drop that line.
    root = logging.getLogger()
    dp_filter = _DropMessage("Sharding spec not found for ")
    root.addFilter(dp_filter)
    try:
        yield buf
    finally:
        root.removeFilter(dp_filter)
        lg.removeHandler(handler)
        lg.setLevel(old[0])
        lg.propagate = old[1]


def build_constraints(
    tables: Sequence[Any],
    strategy: str,
    kernel: Optional[str],
    pooling_factors: Dict[str, float],
    overrides: Dict[str, TableOverride],
    cpu: bool = False,
    auto_defaults: Optional[TableOverride] = None,
    overrides_key: str = "plan.tables",
) -> Dict[str, Any]:
    """Per-table ``ParameterConstraints``: forced strategy / kernel, pooling factors, config overrides.

    ``overrides[t]`` replaces ``auto_defaults`` for table ``t``; a ``data_parallel``-only table without
    kernels gets the dense kernel (the only one TorchRec offers for it). ``overrides_key`` names the
    config section of ``overrides`` in errors (``plan.tables``; the train app's ``sharding.tables``)."""
    from torchrec.distributed.planner.types import ParameterConstraints

    names = {t.name for t in tables}
    auto_types: Optional[List[str]] = None
    if strategy == "auto" and cpu:
        # auto on cpu keeps to TorchRec's own cpu types; row-wise on cpu only when asked for
        auto_types = list(TORCHREC_CPU_STRATEGIES)
    if strategy == "auto" and kernel not in (None, "dense"):
        # a forced sparse kernel excludes data_parallel (dense kernel only): search the other types
        auto_types = [st for st in (auto_types or STRATEGIES[1:]) if st != "data_parallel"]
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise UserError(f"{overrides_key}.{unknown[0]}: no such table (tables: {', '.join(sorted(names)[:20])}{' ...' if len(names) > 20 else ''})")
    out = {}
    for t in tables:
        o = overrides.get(t.name) or (auto_defaults if strategy == "auto" and auto_defaults else TableOverride())
        st = o.sharding_types or ([strategy] if strategy != "auto" else auto_types)
        ck = o.compute_kernels or ([kernel] if kernel else None)
        if st == ["data_parallel"] and ck is None:
            ck = ["dense"]
        pfs = [o.pooling_factor or pooling_factors.get(f, 1.0) for f in t.feature_names]
        out[t.name] = ParameterConstraints(sharding_types=st, compute_kernels=ck, pooling_factors=pfs, min_partition=o.min_partition)
    return out


CUDA_ONLY_STRATEGIES = tuple(st for st in STRATEGIES[1:] if st not in CPU_STRATEGIES)
"""Sharding types store_rec plans only for compute_device cuda (TorchRec offers them for cuda only)."""
ROW_SPLIT_WITH_WORLD = ("row_wise",)
"""Sharding types whose shards shrink as the world grows (rows split over *all* ranks); table_row_wise
and grid_shard split a table over the ranks of one host only."""


def _check_supported(spec: TopologySpec, strategy: str, overrides: Dict[str, TableOverride]) -> None:
    """Refuse cuda-only sharding types on a cpu topology (``PlanningError`` kind ``unsupported_device``)."""
    if spec.compute_device != "cpu":
        return
    wanted = [(None, strategy)] if strategy != "auto" else []
    wanted += [(name, st) for name, o in overrides.items() for st in (o.sharding_types or [])]
    for name, st in wanted:
        if st not in CPU_STRATEGIES:
            where = f"plan.tables.{name}.sharding_types" if name else "--strategy"
            raise PlanningError(
                f"{where}: {st} is not available for compute_device cpu: {st} needs compute_device cuda "
                f"(cpu offers {', '.join(TORCHREC_CPU_STRATEGIES)}, plus row_wise/table_row_wise "
                "via store_rec's CpuRowWiseEBCSharder, see docs/ROW_WISE_CPU.md). Use a cuda topology "
                "(e.g. --topology h100x8) to plan it, or pick a cpu sharding type.",
                kind="unsupported_device",
            )


@dataclass
class StorageDiagnosis:
    """Why a plan did not fit, from the planner's search space (all sizes in GB, per rank after reservation).

    ``kind``: ``table_too_large`` (some table has no sharding option whose every shard fits one rank),
    ``insufficient_storage`` (every table could be placed alone, but together they need more than the
    cluster has) or ``partition`` (they fit in total; the partitioner could not pack them).
    """

    kind: str
    rank_hbm_gb: float
    rank_ddr_gb: float
    table: Optional[str] = None  # the worst table (table_too_large)
    table_gb: float = 0.0  # its smallest possible largest shard (HBM + DDR)
    table_types: Sequence[str] = ()  # sharding types that table was allowed
    table_kernels: Sequence[str] = ()  # compute kernels that table was allowed
    need_gb: float = 0.0  # total: smallest storage of all tables together
    have_gb: float = 0.0  # total: the cluster's HBM + DDR after reservation
    reservation: float = 0.0  # the storage reservation fraction applied


def diagnose_storage(search_space: Sequence[Any], spec: TopologySpec, storage_reservation: float) -> StorageDiagnosis:
    """Classify an insufficient-storage failure using the enumerated ShardingOptions (shard storages)."""
    keep = 1.0 - storage_reservation
    hbm_cap = (spec.hbm_cap_gb if spec.compute_device == "cuda" else 0.0) * GB * keep
    ddr_cap = spec.ddr_cap_gb * GB * keep
    by_table: Dict[str, List[Any]] = {}
    for so in search_space:
        by_table.setdefault(so.name, []).append(so)
    worst: Optional[tuple] = None  # (largest shard of the table's best option, name, options)
    need = 0.0
    for name, opts in by_table.items():
        best_shard = math.inf
        best_total = math.inf
        fits = False
        for so in opts:
            st = [sh.storage for sh in so.shards if sh.storage is not None]
            if not st:
                continue
            if all(x.hbm <= hbm_cap and x.ddr <= ddr_cap for x in st):
                fits = True
            best_shard = min(best_shard, max(x.hbm + x.ddr for x in st))
            best_total = min(best_total, sum(x.hbm + x.ddr for x in st))
        need += 0.0 if best_total == math.inf else best_total
        if not fits and (worst is None or best_shard > worst[0]):
            worst = (best_shard, name, opts)
    base = dict(reservation=storage_reservation, rank_hbm_gb=hbm_cap / GB, rank_ddr_gb=ddr_cap / GB, need_gb=need / GB, have_gb=(hbm_cap + ddr_cap) * spec.world_size / GB)
    if worst is not None:
        shard, name, opts = worst
        return StorageDiagnosis(
            kind="table_too_large", table=name, table_gb=shard / GB,
            table_types=sorted({so.sharding_type for so in opts}), table_kernels=sorted({so.compute_kernel for so in opts}), **base,
        )
    return StorageDiagnosis(kind="insufficient_storage" if need > (hbm_cap + ddr_cap) * spec.world_size else "partition", **base)


def _storage_suggestion(d: StorageDiagnosis, spec: TopologySpec, strategy: str, kernel: Optional[str]) -> str:
    """A suggestion that can fix the failure ``d`` describes (never "more ranks" where that cannot help)."""
    tips: List[str] = []
    hbm_only = {"fused", "dense"}
    if d.kind == "table_too_large":
        cap = d.rank_hbm_gb + d.rank_ddr_gb
        grows = [st for st in d.table_types if st in ROW_SPLIT_WITH_WORLD]
        head = (
            f"table {d.table} needs at least {d.table_gb:.1f} GB on one rank (sharding types {'/'.join(d.table_types)}, "
            f"kernels {'/'.join(d.table_kernels)}); a rank holds {d.rank_hbm_gb:.1f} GB HBM + {d.rank_ddr_gb:.1f} GB DDR after reservation"
        )
        if grows:
            w = spec.world_size * 2 ** max(1, math.ceil(math.log2(max(d.table_gb / max(cap, 1e-12), 1.0))))
            tips.append(f"more ranks (world_size {spec.world_size} -> {w}: {'/'.join(grows)} shards shrink as ranks grow)")
        else:
            tips.append(f"more ranks cannot help ({'/'.join(d.table_types)} keep{'s' if len(d.table_types) == 1 else ''} a shard of this size on one rank)")
            tips.append("--strategy row_wise (rows split over all ranks) or column_wise / table_row_wise (or plan.tables."
                        f"{d.table}.sharding_types)")
        uvm_ok = spec.compute_device == "cuda" and set(d.table_kernels) <= hbm_only
        if uvm_ok and d.table_gb <= d.rank_ddr_gb:
            tips.append("--kernel fused_uvm_caching (table in host DDR with an HBM cache)")
        else:
            ddr = math.ceil(d.table_gb / max(1.0 - d.reservation, 1e-12))
            tips.append(f"more DDR per rank (--topology-set ddr_cap_gb={ddr} or more{' with --kernel fused_uvm_caching' if uvm_ok else ''})")
        return head + " -- suggestion: " + "; ".join(tips)
    if d.kind == "insufficient_storage":
        per_rank = d.rank_hbm_gb + d.rank_ddr_gb
        w = math.ceil(d.need_gb / max(per_rank, 1e-12))
        head = f"the tables need at least {d.need_gb:.1f} GB, the cluster has {d.have_gb:.1f} GB (HBM + DDR after reservation)"
        tips.append(f"more ranks (world_size {spec.world_size} -> at least {w} for the tables alone)")
    else:
        head = f"the tables need {d.need_gb:.1f} GB of the cluster's {d.have_gb:.1f} GB, but no placement packs them onto the ranks"
        tips.append(f"more ranks (world_size {spec.world_size} -> {spec.world_size * 2})")
        if strategy in ("data_parallel", "table_wise", "table_column_wise", "column_wise"):
            tips.append("--strategy row_wise (smaller, evenly sized shards)")
    if spec.compute_device == "cuda" and kernel in hbm_only:
        tips.append("--kernel fused_uvm_caching (tables in host DDR with an HBM cache)")
    tips.append("a smaller plan.storage_reservation or per-rank batch size")
    return head + " -- suggestion: " + "; ".join(tips)


def _no_combination_hint(sharder: Any, spec: TopologySpec, strategy: str, kernel: Optional[str]) -> str:
    """Why the enumerator found no (sharding type, kernel) pair: name what this device offers."""
    dev = spec.compute_device
    types = [strategy] if strategy != "auto" else list(sharder.sharding_types(dev))
    offered = {st: list(sharder.compute_kernels(st, dev)) for st in types if st in sharder.sharding_types(dev)}
    if kernel is not None and offered and not any(kernel in ks for ks in offered.values()):
        parts = "; ".join(f"{st}: {', '.join(ks)}" for st, ks in offered.items())
        why = f"kernel {kernel} is not offered for {'/'.join(offered)} on {dev} (offered: {parts})"
        if dev == "cpu" and "uvm" in kernel:
            why += "; UVM kernels need cuda"
        return why + " -- suggestion: pick an offered --kernel, or leave --kernel unset"
    return (
        "suggestion: this sharding type / compute kernel pair does not exist for the device "
        "(data_parallel needs kernel dense; the fused kernels need a sharded type); relax --kernel or --strategy "
        "or the plan.tables overrides"
    )


AUTO_PROPOSER_LIMIT = 200_000
"""``proposer: auto`` uses TorchRec's default proposers while ``tables**2 * world_size`` is at most this."""


def choose_proposer(name: str, num_tables: int, world_size: int) -> str:
    """Resolve ``proposer: auto`` by problem size; other names are returned unchanged.

    TorchRec's default proposers (grid search, greedy by depth, greedy, uniform) make ~one proposal per
    sharding option (tables x types x kernels) and partition every proposal over all ranks, so their
    search costs ~``T**2 * W`` (T tables, W ranks): measured here 14 s at T=26, W=64 and ~7 min at
    T=200, W=64. ``UniformProposer`` makes one proposal per sharding type (the same type for every
    table; kernels still chosen per table) and stays under a minute at T=200, W=1024. ``auto`` picks
    ``default`` while ``T**2 * W <= AUTO_PROPOSER_LIMIT`` (~15 s of search here), else ``uniform``.
    """
    if name != "auto":
        return name
    return "default" if num_tables**2 * world_size <= AUTO_PROPOSER_LIMIT else "uniform"


def _proposers(name: str) -> Optional[List[Any]]:
    from torchrec.distributed.planner.proposers import GreedyProposer, UniformProposer

    if name == "greedy":
        return [GreedyProposer()]
    if name == "uniform":
        return [UniformProposer()]
    return None


def plan_tables(
    tables: Sequence[Any],
    spec: TopologySpec,
    strategy: str = "auto",
    kernel: Optional[str] = None,
    cfg: Optional[PlanConfig] = None,
    pooling_factors: Optional[Dict[str, float]] = None,
) -> PlanResult:
    """Plan ``tables`` (EmbeddingBagConfigs) for the cluster ``spec`` offline.

    Args:
        tables: one ``EmbeddingBagConfig`` per table (rows = num_embeddings, dim = embedding_dim).
        spec: the cluster (world size, devices, capacities, bandwidths, per-rank batch size).
        strategy: ``auto`` or a sharding type forced on every table (see :data:`STRATEGIES`).
        kernel: compute kernel forced on every table (``fused``, ``fused_uvm_caching`` ...) or None.
        cfg: the ``plan:`` config section (storage reservation, per-table overrides, proposer).
        pooling_factors: feature -> mean ids per sample (1.0 where missing).

    Raises:
        UserError: TorchRec found no plan (its reason + a suggestion), or the request is impossible.
    """
    import torch
    from torchrec.distributed.planner import EmbeddingShardingPlanner
    from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
    from torchrec.distributed.planner.types import PlannerError
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    from store_rec.distributed.cpu_row_wise import CpuRowWiseEBCSharder  # == TorchRec's sharder on cuda

    cfg = cfg or PlanConfig()
    if strategy not in STRATEGIES:
        raise UserError(f"--strategy: {strategy!r} is not one of {', '.join(STRATEGIES)}")
    if kernel is not None and kernel not in KERNELS:
        raise UserError(f"--kernel: {kernel!r} is not one of {', '.join(KERNELS)}")
    if not tables:
        raise UserError("no embedding tables to plan")
    _check_supported(spec, strategy, cfg.tables)
    pfs = dict(pooling_factors or {})
    pfs.update(cfg.pooling_factors)

    ebc = EmbeddingBagCollection(tables=list(tables), device=torch.device("meta"))
    constraints = build_constraints(tables, strategy, kernel, pfs, cfg.tables, cpu=spec.compute_device == "cpu", auto_defaults=cfg.auto_defaults)
    topology = make_topology(spec)
    proposer = choose_proposer(cfg.proposer, len(tables), spec.world_size)
    if proposer != cfg.proposer:
        logger.log(
            logging.INFO if proposer != "default" else logging.DEBUG,
            "proposer auto -> %s (%d tables^2 x %d ranks = %d %s %d)", proposer, len(tables), spec.world_size,
            len(tables) ** 2 * spec.world_size, "<=" if proposer == "default" else ">", AUTO_PROPOSER_LIMIT,
        )
    planner = EmbeddingShardingPlanner(
        topology=topology,
        batch_size=spec.batch_size,
        storage_reservation=FixedPercentageStorageReservation(percentage=cfg.storage_reservation),
        proposer=_proposers(proposer),
        constraints=constraints,
        debug=True,
        timeout_seconds=cfg.timeout_s,
    )
    t0 = time.perf_counter()
    sharder = CpuRowWiseEBCSharder()
    head = f"no sharding plan for {len(tables)} tables on {spec.world_size} x {spec.compute_device} (strategy {strategy}, kernel {kernel or 'auto'})"
    with capture_planner_stats() as buf, fast_planner(cfg.fast_planner):
        try:
            plan = planner.plan(ebc, [sharder])
        except PlannerError as e:
            reason = " ".join(str(e).replace("\t", " ").split())
            kind = getattr(getattr(e, "error_type", None), "value", None) or "other"
            space = getattr(planner._enumerator, "last_stored_search_space", None)
            if space:
                diag = diagnose_storage(space, spec, cfg.storage_reservation)
                if diag.kind == "table_too_large" or kind in ("insufficient_storage", "partition") or "storage" in reason.lower():
                    kind = diag.kind
                    raise PlanningError(f"{head}: {_storage_suggestion(diag, spec, strategy, kernel)}. TorchRec says: {reason}", kind=kind) from None
            raise PlanningError(
                f"{head}: TorchRec says: {reason} -- suggestion: relax --strategy/--kernel or plan.tables overrides (try --strategy auto)",
                kind=kind,
            ) from None
        except RuntimeError as e:  # the enumerator's "No available sharding type and compute kernel ..."
            if "No available sharding type" not in str(e):
                raise
            raise PlanningError(
                f"{head}: TorchRec says: {' '.join(str(e).split())} -- {_no_combination_hint(sharder, spec, strategy, kernel)}",
                kind="strict_constraints",
            ) from None
    elapsed = time.perf_counter() - t0
    options = list(planner._best_plan or [])  # the ShardingOptions behind the plan (shards, storage, perf)
    return PlanResult(
        strategy=strategy,
        kernel=kernel,
        topology=spec,
        tables=list(tables),
        sharding_plan=plan,
        sharding_options=options,
        ranks=rank_usage(options, spec.world_size),
        stats_text=buf.getvalue(),
        planning_time_s=elapsed,
        storage_reservation=cfg.storage_reservation,
        pooling_factors={f: pfs.get(f, 1.0) for t in tables for f in t.feature_names},
        proposer=proposer,
    )
