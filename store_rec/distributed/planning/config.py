"""The ``plan:`` config section as dataclasses, and the names it accepts (strategies, kernels).

Validated on construction: an error names the key (``plan.tables.<t>.sharding_types`` ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional

from store_rec.config import check
from store_rec.distributed.sharding_types import CPU_SHARDING_TYPES, SHARDING_TYPES, TORCHREC_CPU_SHARDING_TYPES
from store_rec.errors import UserError

STRATEGIES = ("auto", *SHARDING_TYPES)
TORCHREC_CPU_STRATEGIES = TORCHREC_CPU_SHARDING_TYPES
"""Sharding types TorchRec itself offers for compute_device cpu."""
CPU_STRATEGIES = CPU_SHARDING_TYPES
"""What store_rec plans and runs on cpu/gloo: TorchRec's four plus row-wise through
:class:`store_rec.distributed.cpu_row_wise.CpuRowWiseEBCSharder` (see docs/ROW_WISE_CPU.md)."""
KERNELS = ("dense", "fused", "fused_uvm", "fused_uvm_caching", "quant", "key_value")
STATS_LOGGER = "torchrec.distributed.planner.stats"

CUDA_ONLY_STRATEGIES = tuple(st for st in STRATEGIES[1:] if st not in CPU_STRATEGIES)
"""Sharding types store_rec plans only for compute_device cuda (TorchRec offers them for cuda only)."""
ROW_SPLIT_WITH_WORLD = ("row_wise",)
"""Sharding types whose shards shrink as the world grows (rows split over *all* ranks); table_row_wise
and grid_shard split a table over the ranks of one host only."""


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
        check(self.min_partition is None or (self.min_partition >= 4 and self.min_partition % 4 == 0), "min_partition",
              f"must be a multiple of 4 >= 4, got {self.min_partition}")


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
          partitioner: greedy           # greedy (TorchRec's default: by storage) | greedy_perf | memory_balanced
          timeout_s: null               # stop searching after this many seconds (best plan so far)
          fast_planner: true            # skip planner work that does not change the plan (identical results, faster)
          synthetic: {num_tables: 0, rows_scale: 1.0}
    """

    storage_reservation: float = 0.15
    pooling_factors: Dict[str, float] = field(default_factory=dict)
    pooling_sample_rows: int = 200_000
    tables: Dict[str, TableOverride] = field(default_factory=dict)
    proposer: Literal["auto", "default", "greedy", "uniform"] = "auto"
    # how a proposal's shards are placed on ranks (planning.planner.PARTITIONERS): TorchRec's
    # GreedyPerfPartitioner sorting by storage (its default) or by perf, or its MemoryBalancedPartitioner
    # (greedy by perf, then re-packed for the lowest max HBM within memory_balanced_tolerance of the perf)
    partitioner: Literal["greedy", "greedy_perf", "memory_balanced"] = "greedy"
    memory_balanced_tolerance: float = 0.02
    memory_balanced_max_search: int = 10
    timeout_s: Optional[int] = None
    fast_planner: bool = True  # skip TorchRec planner work that does not change the plan (see fast_planner())
    auto_defaults: Optional[TableOverride] = None  # constraints for every table in --strategy auto runs
    synthetic: SyntheticTablesConfig = field(default_factory=SyntheticTablesConfig)

    def __post_init__(self) -> None:
        check(0.0 <= self.storage_reservation < 1.0, "storage_reservation", f"must be in [0, 1), got {self.storage_reservation}")
        check(self.pooling_sample_rows >= 1, "pooling_sample_rows", f"must be >= 1, got {self.pooling_sample_rows}")
        check(self.timeout_s is None or self.timeout_s >= 1, "timeout_s", f"must be >= 1, got {self.timeout_s}")
        check(self.memory_balanced_tolerance >= 0, "memory_balanced_tolerance", f"must be >= 0, got {self.memory_balanced_tolerance}")
        check(self.memory_balanced_max_search >= 1, "memory_balanced_max_search", f"must be >= 1, got {self.memory_balanced_max_search}")
        for k, v in self.pooling_factors.items():
            check(v > 0, f"pooling_factors.{k}", f"must be > 0, got {v}")
