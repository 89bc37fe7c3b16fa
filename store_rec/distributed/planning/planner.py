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

History tokens: ``EmbeddingConfig`` tables (a model's ``EmbeddingCollection``, unpooled lookups) are planned
with the ``EmbeddingBagConfig`` ones in one search: the planner gets a module holding a meta EBC (``ebc``)
and a meta EC (``ec``) and both sharders (:mod:`store_rec.distributed.sequence`); their pooling factor is
the mean sequence length (ids per sample). Without EC tables the module is the bare EBC, as before.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence

from store_rec.distributed.planning.config import KERNELS, STATS_LOGGER, STRATEGIES, PlanConfig, PlanningError
from store_rec.distributed.planning.constraints import _check_supported, build_constraints
from store_rec.distributed.planning.diagnosis import _no_combination_hint, _storage_suggestion, diagnose_storage
from store_rec.distributed.planning.results import PlanResult, rank_usage
from store_rec.distributed.planning.torchrec_patches import fast_planner
from store_rec.distributed.topology import TopologySpec, make_topology
from store_rec.errors import UserError

logger = logging.getLogger("store_rec.distributed.planning")


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


#: ``plan.partitioner`` / ``store-rec plan --partitioner`` -> what TorchRec's planner places shards with
PARTITIONERS = {
    "greedy": "GreedyPerfPartitioner(sort_by=SortBy.STORAGE): largest shards first onto the rank that keeps perf lowest (TorchRec's default)",
    "greedy_perf": "GreedyPerfPartitioner(sort_by=SortBy.PERF): the most expensive shards first",
    "memory_balanced": "MemoryBalancedPartitioner: greedy by perf, then searches (max_search_count) for the lowest max HBM per rank "
                       "whose perf stays within tolerance of the greedy plan's",
}


def make_partitioner(cfg: PlanConfig) -> Any:
    """TorchRec's partitioner for ``cfg.partitioner`` (see :data:`PARTITIONERS`)."""
    from torchrec.distributed.planner.partitioners import GreedyPerfPartitioner, MemoryBalancedPartitioner, SortBy

    if cfg.partitioner not in PARTITIONERS:
        raise UserError(f"--partitioner: {cfg.partitioner!r} is not one of {', '.join(PARTITIONERS)}")
    if cfg.partitioner == "memory_balanced":
        return MemoryBalancedPartitioner(max_search_count=cfg.memory_balanced_max_search, tolerance=cfg.memory_balanced_tolerance)
    return GreedyPerfPartitioner(sort_by=SortBy.PERF if cfg.partitioner == "greedy_perf" else SortBy.STORAGE)


def planning_module(tables: Sequence[Any], device: Any = None) -> Any:
    """The module the planner plans (on the meta device unless ``device`` is given): the bare
    ``EmbeddingBagCollection`` of ``tables``, or, when some are ``EmbeddingConfig`` s, a module with ``ebc``
    (the bag tables, if any) and ``ec`` (an ``EmbeddingCollection`` of the others; TorchRec wants one
    embedding dim for all of them) whose ``forward(kjt) -> {feature: Tensor}`` gives the pooled
    ``Tensor[B, D]`` of each bag feature and the unpooled ``Tensor[sum(lengths), D]`` of each sequence
    feature (what ``store-rec plan --verify`` compares)."""
    import torch
    from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

    from store_rec.distributed.sequence import BagsAndSequences, is_sequence_table

    dev = torch.device("meta") if device is None else torch.device(device)
    bags = [t for t in tables if not is_sequence_table(t)]
    seqs = [t for t in tables if is_sequence_table(t)]
    if not seqs:
        return EmbeddingBagCollection(tables=bags, device=dev)
    dims = sorted({int(t.embedding_dim) for t in seqs})
    if len(dims) > 1:
        raise UserError(f"EmbeddingCollection tables {[t.name for t in seqs][:8]} have dims {dims}: an EmbeddingCollection "
                        "needs one embedding dim for all of its tables")
    return BagsAndSequences(EmbeddingBagCollection(tables=bags, device=dev) if bags else None,
                            EmbeddingCollection(tables=seqs, device=dev))


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
        tables: one ``EmbeddingBagConfig`` per EBC table (rows = num_embeddings, dim = embedding_dim) and
            one ``EmbeddingConfig`` per EmbeddingCollection table (history tokens), if any.
        spec: the cluster (world size, devices, capacities, bandwidths, per-rank batch size).
        strategy: ``auto`` or a sharding type forced on every table (see :data:`STRATEGIES`).
        kernel: compute kernel forced on every table (``fused``, ``fused_uvm_caching`` ...) or None.
        cfg: the ``plan:`` config section (storage reservation, per-table overrides, proposer).
        pooling_factors: feature -> mean ids per sample (1.0 where missing).

    Raises:
        UserError: TorchRec found no plan (its reason + a suggestion), or the request is impossible.
    """
    from torchrec.distributed.planner import EmbeddingShardingPlanner
    from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
    from torchrec.distributed.planner.types import PlannerError

    from store_rec.distributed.cpu_row_wise import CpuRowWiseEBCSharder  # == TorchRec's sharder on cuda
    from store_rec.distributed.sequence import CpuSequenceECSharder

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

    module = planning_module(tables)
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
        partitioner=make_partitioner(cfg),
        constraints=constraints,
        debug=True,
        timeout_seconds=cfg.timeout_s,
    )
    t0 = time.perf_counter()
    sharder = CpuRowWiseEBCSharder()
    head = f"no sharding plan for {len(tables)} tables on {spec.world_size} x {spec.compute_device} (strategy {strategy}, kernel {kernel or 'auto'})"
    with capture_planner_stats() as buf, fast_planner(cfg.fast_planner):
        try:
            plan = planner.plan(module, [sharder, CpuSequenceECSharder()])
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
        partitioner=cfg.partitioner,
    )
