"""Offline sharding plans with TorchRec's ``EmbeddingShardingPlanner`` (no process group, no GPUs).

The package facade: import from here. One module per concern:

* :mod:`.config` -- the ``plan:`` config dataclasses and accepted names (strategies, kernels);
* :mod:`.tables` -- table fingerprints, synthetic industrial table sets, pooling factors;
* :mod:`.results` -- :class:`PlanResult` and per-rank usage;
* :mod:`.constraints` -- per-table ``ParameterConstraints`` and device checks;
* :mod:`.diagnosis` -- why a plan did not fit, and what would fix it;
* :mod:`.torchrec_patches` -- :func:`fast_planner`, the only patches of TorchRec's private planner
  internals (behind a torchrec version check);
* :mod:`.planner` -- the entry point :func:`plan_tables` (see its module docstring for the method).
"""

from store_rec.distributed.planning.config import (
    CPU_STRATEGIES,
    CUDA_ONLY_STRATEGIES,
    KERNELS,
    ROW_SPLIT_WITH_WORLD,
    STATS_LOGGER,
    STRATEGIES,
    TORCHREC_CPU_STRATEGIES,
    PlanConfig,
    PlanningError,
    SyntheticTablesConfig,
    TableOverride,
)
from store_rec.distributed.planning.constraints import build_constraints
from store_rec.distributed.planning.diagnosis import StorageDiagnosis, diagnose_storage
from store_rec.distributed.planning.planner import (
    AUTO_PROPOSER_LIMIT,
    PARTITIONERS,
    capture_planner_stats,
    choose_proposer,
    make_partitioner,
    plan_tables,
)
from store_rec.distributed.planning.results import PlanResult, RankUsage, rank_usage
from store_rec.distributed.planning.tables import (
    measure_pooling_factors,
    synthetic_pooling_factors,
    synthetic_tables,
    table_fingerprint,
)
from store_rec.distributed.planning.torchrec_patches import PATCHED_TORCHREC, copy_sharding_options, fast_planner

__all__ = [
    "AUTO_PROPOSER_LIMIT",
    "CPU_STRATEGIES",
    "CUDA_ONLY_STRATEGIES",
    "KERNELS",
    "PARTITIONERS",
    "PATCHED_TORCHREC",
    "ROW_SPLIT_WITH_WORLD",
    "STATS_LOGGER",
    "STRATEGIES",
    "TORCHREC_CPU_STRATEGIES",
    "PlanConfig",
    "PlanResult",
    "PlanningError",
    "RankUsage",
    "StorageDiagnosis",
    "SyntheticTablesConfig",
    "TableOverride",
    "build_constraints",
    "capture_planner_stats",
    "choose_proposer",
    "make_partitioner",
    "copy_sharding_options",
    "diagnose_storage",
    "fast_planner",
    "measure_pooling_factors",
    "plan_tables",
    "rank_usage",
    "synthetic_pooling_factors",
    "synthetic_tables",
    "table_fingerprint",
]
