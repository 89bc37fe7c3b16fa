"""Why a plan did not fit: classify a storage failure from the planner's search space and suggest a
change that can fix it (never "more ranks" where that cannot help)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from store_rec.distributed.planning.config import ROW_SPLIT_WITH_WORLD
from store_rec.distributed.topology import GB, TopologySpec


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
    base: Dict[str, Any] = dict(reservation=storage_reservation, rank_hbm_gb=hbm_cap / GB, rank_ddr_gb=ddr_cap / GB, need_gb=need / GB,
                have_gb=(hbm_cap + ddr_cap) * spec.world_size / GB)
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
