"""Per-table ``ParameterConstraints`` for TorchRec's planner (forced strategy / kernel, pooling factors,
config overrides) and the refusal of cuda-only sharding types on a cpu topology."""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

from store_rec.distributed.planning.config import (
    CPU_STRATEGIES,
    STRATEGIES,
    TORCHREC_CPU_STRATEGIES,
    PlanningError,
    TableOverride,
)
from store_rec.distributed.topology import TopologySpec
from store_rec.errors import UserError

logger = logging.getLogger("store_rec.distributed.planning")


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
    config section of ``overrides`` in errors (``plan.tables``; the train app's ``sharding.tables``).

    ``EmbeddingCollection`` tables (``EmbeddingConfig``, the history tokens' tables; see
    :mod:`store_rec.distributed.sequence`) are constrained to the types their sharder runs on this device
    (:func:`~store_rec.distributed.sequence.sequence_sharding_types`): a forced ``strategy`` or global
    default they do not offer (table_row_wise, table_column_wise, grid_shard; data_parallel on cpu) leaves
    them to the planner's choice among those, logged; a per-table override naming one is an error."""
    from torchrec.distributed.planner.types import ParameterConstraints

    from store_rec.distributed.sequence import is_sequence_table, sequence_sharding_types

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
    fallbacks: List[str] = []  # EmbeddingCollection tables whose requested types they lack
    for t in tables:
        o = overrides.get(t.name) or (auto_defaults if strategy == "auto" and auto_defaults else TableOverride())
        st = o.sharding_types or ([strategy] if strategy != "auto" else auto_types)
        ck = o.compute_kernels or ([kernel] if kernel else None)
        if is_sequence_table(t):
            # auto: every type the EC sharder runs here (row_wise included: TorchRec's own on cpu for an EC)
            wanted = o.sharding_types or ([strategy] if strategy != "auto" else None)
            explicit = t.name in overrides and bool(overrides[t.name].sharding_types)
            st = _sequence_types(t.name, wanted, sequence_sharding_types(cpu), explicit=explicit,
                                 kernel_sparse=any(k != "dense" for k in ck or []),
                                 where=f"{overrides_key}.{t.name}.sharding_types", cpu=cpu, fallbacks=fallbacks)
        if st == ["data_parallel"] and ck is None:
            ck = ["dense"]
        pfs = [o.pooling_factor or pooling_factors.get(f, 1.0) for f in t.feature_names]
        out[t.name] = ParameterConstraints(sharding_types=st, compute_kernels=ck, pooling_factors=pfs, min_partition=o.min_partition)
    if fallbacks:
        logger.info("EmbeddingCollection (history) tables cannot have the requested sharding type; planned with: %s",
                    "; ".join(fallbacks))
    return out


def _sequence_types(name: str, wanted: Optional[List[str]], offered: List[str], *, explicit: bool, kernel_sparse: bool,
                    where: str, cpu: bool, fallbacks: List[str]) -> List[str]:
    """The sharding types an ``EmbeddingCollection`` table ``name`` is planned with (see :func:`build_constraints`)."""
    if kernel_sparse:  # data_parallel has the dense kernel only
        offered = [st for st in offered if st != "data_parallel"]
    if wanted is None:
        return offered
    bad = [st for st in wanted if st not in offered]
    if explicit and bad:
        raise UserError(f"{where}: {bad} cannot shard {name}, a table of an EmbeddingCollection (unpooled history "
                        f"tokens): it can be {offered} on {'cpu' if cpu else 'cuda'}")
    keep = [st for st in wanted if st in offered]
    if bad:
        fallbacks.append(f"{name}: {', '.join(keep or offered)}")
    return keep or offered


def _check_supported(spec: TopologySpec, strategy: str, overrides: Dict[str, TableOverride]) -> None:
    """Refuse cuda-only sharding types on a cpu topology (``PlanningError`` kind ``unsupported_device``)."""
    if spec.compute_device != "cpu":
        return
    wanted: List[Tuple[Optional[str], str]] = [(None, strategy)] if strategy != "auto" else []
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
