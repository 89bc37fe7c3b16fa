"""What one planner run returns: :class:`PlanResult` (plan, TorchRec's stats, per-rank figures) and
the per-rank sums :func:`rank_usage` computes from the planner's ShardingOptions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from store_rec.distributed.topology import GB, TopologySpec


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
    tables: List[Any]  # EmbeddingBagConfig (EBC tables) / EmbeddingConfig (EmbeddingCollection tables: history tokens)
    sharding_plan: Any  # torchrec ShardingPlan
    sharding_options: List[Any]  # torchrec ShardingOption (best plan, with shards and perf)
    ranks: List[RankUsage]
    stats_text: str
    planning_time_s: float
    storage_reservation: float
    pooling_factors: Dict[str, float]
    proposer: str = "default"  # the proposer(s) that searched (after ``auto`` was resolved)
    partitioner: str = "greedy"  # planning.planner.PARTITIONERS

    @property
    def world_size(self) -> int:
        return self.topology.world_size

    def table_usage(self) -> Dict[str, Dict[str, Any]]:
        """Per table: ``{kind, sharding_type, compute_kernel, ranks, hbm_gb, ddr_gb}`` summed over its shards
        (``kind``: ``bag`` for an EBC table, ``sequence`` for an EmbeddingCollection table: history tokens)."""
        from store_rec.distributed.sequence import is_sequence_table

        kinds = {t.name: "sequence" if is_sequence_table(t) else "bag" for t in self.tables}
        out: Dict[str, Dict[str, Any]] = {}
        for so in self.sharding_options:
            hbm = sum(s.storage.hbm for s in so.shards if s.storage is not None) / GB
            ddr = sum(s.storage.ddr for s in so.shards if s.storage is not None) / GB
            ranks = sorted({int(s.rank) for s in so.shards if s.rank is not None and s.rank >= 0})
            out[so.name] = {"kind": kinds.get(so.name, "bag"), "sharding_type": so.sharding_type,
                            "compute_kernel": so.compute_kernel, "ranks": ranks, "hbm_gb": round(hbm, 6), "ddr_gb": round(ddr, 6)}
        return out

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
        seq = [u for u in self.table_usage().values() if u["kind"] == "sequence"]
        return {
            "world_size": self.world_size,
            "strategy": self.strategy,
            "kernel": self.kernel or "auto",
            "proposer": self.proposer,
            "partitioner": self.partitioner,
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
            # EmbeddingCollection (history) tables: how many, their memory over all ranks
            "sequence_tables": len(seq),
            "sequence_hbm_gb": round(sum(u["hbm_gb"] for u in seq), 6),
            "sequence_ddr_gb": round(sum(u["ddr_gb"] for u in seq), 6),
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
