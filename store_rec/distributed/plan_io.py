"""Sharding plans as JSON files that ``store-rec train --plan FILE`` loads.

File format (``format: store_rec.plan/1``)::

    {
      "format": "store_rec.plan/1",
      "world_size": 64, "local_world_size": 8, "compute_device": "cuda",
      "module_path": "",                       # FQN of the planned EmbeddingBagCollection ("" = bare EBC)
      "ec_module_path": "ec",                  # FQN of the planned EmbeddingCollection (only with history tables)
      "strategy": "auto", "kernel": null, "topology": {...TopologySpec...},
      "tables": [{"name": "t_site_id", "rows": 4737, "dim": 16, "features": ["site_id"]},
                 {"name": "t_hist_item_id", ..., "kind": "sequence"}, ...],
      "plan": {
        "t_site_id": {"sharding_type": "table_wise", "compute_kernel": "fused", "ranks": [3],
                      "shards": [{"rank": 3, "offsets": [0, 0], "sizes": [4737, 16]}],
                      "kind": "bag", "hbm_gb": 0.0003, "ddr_gb": 0.0},
        ...
      },
      "summary": {...}                         # the comparison-table record of this run
    }

``data_parallel`` tables have ``shards: []`` and every rank in ``ranks`` (TorchRec puts no sharding spec
on them). Tables of ``"kind": "sequence"`` belong to the model's ``EmbeddingCollection`` (history tokens,
:mod:`store_rec.distributed.sequence`); their entries go into the EC's module plan. ``kind`` / ``hbm_gb`` /
``ddr_gb`` in a plan entry are informative (the planner's estimate of that table's memory on all ranks).
:func:`load_plan` checks the file against the tables the caller builds and the world it runs in, and
rejects any difference with a message naming it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from store_rec.distributed.sharding_types import SEQUENCE_CPU_SHARDING_TYPES
from store_rec.errors import UserError
from store_rec.fileio import atomic_write_json

FORMAT = "store_rec.plan/1"


def plan_to_dict(result: Any, module_path: Optional[str] = None, ec_module_path: str = "ec") -> Dict[str, Any]:
    """A :class:`store_rec.distributed.planning.PlanResult` -> the JSON-able dict above. ``module_path``
    default: where :func:`store_rec.distributed.planning.planner.planning_module` put the EBC (``""``: the
    bare EBC; ``"ebc"`` next to an EmbeddingCollection ``"ec"``)."""
    from store_rec.distributed.planning import table_fingerprint
    from store_rec.distributed.sequence import PLAN_EBC_PATH

    fingerprint = table_fingerprint(result.tables)
    has_seq = any(t.get("kind") == "sequence" for t in fingerprint)
    if module_path is None:
        module_path = PLAN_EBC_PATH if has_seq else ""
    usage = result.table_usage() if hasattr(result, "table_usage") else {}
    plan: Dict[str, Any] = {}
    module_plans = result.sharding_plan.plan
    for _path, mod_plan in module_plans.items():
        for name, ps in mod_plan.items():
            shards = []
            if ps.sharding_spec is not None:
                for md in ps.sharding_spec.shards:
                    shards.append({"rank": md.placement.rank(), "offsets": list(md.shard_offsets), "sizes": list(md.shard_sizes)})
            plan[name] = {
                "sharding_type": ps.sharding_type,
                "compute_kernel": ps.compute_kernel,
                "ranks": list(ps.ranks or []),
                "shards": shards,
                **{k: usage[name][k] for k in ("kind", "hbm_gb", "ddr_gb") if name in usage},
            }
    spec = result.topology
    return {
        "format": FORMAT,
        "world_size": spec.world_size,
        "local_world_size": min(spec.local_world_size, spec.world_size),
        "compute_device": spec.compute_device,
        "module_path": module_path,
        **({"ec_module_path": ec_module_path} if has_seq else {}),
        "strategy": result.strategy,
        "kernel": result.kernel,
        "topology": dataclasses.asdict(spec),
        "tables": fingerprint,
        "pooling_factors": result.pooling_factors,
        "plan": plan,
        "summary": result.summary(),
    }


def save_plan(result: Any, path: os.PathLike, module_path: Optional[str] = None, ec_module_path: str = "ec") -> Path:
    """Write the plan JSON atomically (temp file + rename); returns the path."""
    return atomic_write_json(path, plan_to_dict(result, module_path, ec_module_path), indent=1)


def read_plan(path: os.PathLike) -> Dict[str, Any]:
    """The raw plan dict; errors name the file."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: plan file not found (write one with `store-rec plan ... --out DIR`)")
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{p}: not a valid plan JSON: {e}") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise UserError(f"{p}: not a store_rec plan (expected format {FORMAT!r}, got {d.get('format') if isinstance(d, dict) else type(d).__name__!r})")
    for key in ("world_size", "compute_device", "tables", "plan"):
        if key not in d:
            raise UserError(f"{p}: plan file has no {key!r}")
    return d


HOST_GROUPED_TYPES = ("table_row_wise", "grid_shard")
"""Sharding types whose shards TorchRec groups by host (``local_world_size`` ranks per host)."""


def check_plan(
    d: Dict[str, Any],
    tables: Sequence[Any],
    world_size: int,
    device: str,
    where: str = "plan",
    local_world_size: Optional[int] = None,
) -> None:
    """Raise :class:`UserError` naming every difference between plan ``d`` and the running job.

    ``local_world_size`` (ranks per host of the job; None = unknown, not checked) must equal the plan's
    for cuda plans: each shard's placement is ``cuda:{rank % local_world_size}`` and the planner's
    intra-/inter-host cost model assumed it. For cpu plans it matters only where shards are grouped by
    host (table_row_wise, grid_shard); cpu placements carry no device index.
    """
    from store_rec.distributed.planning import table_fingerprint

    problems: List[str] = []
    if int(d["world_size"]) != int(world_size):
        problems.append(f"world size: plan has {d['world_size']}, this job has {world_size}")
    dev = str(device).split(":")[0]
    if d["compute_device"] != dev:
        problems.append(f"device: plan is for {d['compute_device']}, this job runs on {dev}")
    plan_local = int(d.get("local_world_size") or d["world_size"])
    if local_world_size is not None and int(local_world_size) != plan_local and d["compute_device"] == dev:
        grouped = sorted({str(e.get("sharding_type")) for e in d["plan"].values() if isinstance(e, dict)} & set(HOST_GROUPED_TYPES))
        if dev == "cuda":
            problems.append(
                f"local world size (ranks per host): plan has {plan_local}, this job has {local_world_size} "
                f"(shard placements are cuda:{{rank % {plan_local}}} and the cost model assumed {plan_local} ranks per host)"
            )
        elif grouped:
            problems.append(
                f"local world size (ranks per host): plan has {plan_local}, this job has {local_world_size} "
                f"({', '.join(grouped)} shards are grouped by host)"
            )
    saved = {t["name"]: t for t in d["tables"]}
    now = {t["name"]: t for t in table_fingerprint(tables)}
    missing = sorted(set(now) - set(saved))
    extra = sorted(set(saved) - set(now))
    if missing:
        problems.append(f"tables missing from the plan: {', '.join(missing)}")
    if extra:
        problems.append(f"tables in the plan but not in the model: {', '.join(extra)}")
    for name in sorted(set(saved) & set(now)):
        a, b = saved[name], now[name]
        for key, label in (("rows", "rows"), ("dim", "dim"), ("features", "features")):
            if key in a and a[key] != b[key]:
                problems.append(f"table {name}: {label} changed (plan {a[key]}, model {b[key]})")
        if a.get("kind", "bag") != b.get("kind", "bag"):
            problems.append(f"table {name}: planned as {a.get('kind', 'bag')} (EmbeddingBagCollection: bag, EmbeddingCollection: "
                            f"sequence), the model has it as {b.get('kind', 'bag')}")
        if name not in d["plan"]:
            problems.append(f"table {name}: no sharding entry in the plan")
        elif b.get("kind") == "sequence" and dev == "cpu" and isinstance(d["plan"][name], dict) \
                and d["plan"][name].get("sharding_type") not in SEQUENCE_CPU_SHARDING_TYPES:
            problems.append(f"table {name}: {d['plan'][name].get('sharding_type')} does not run for an EmbeddingCollection "
                            f"table on cpu (cpu: {', '.join(SEQUENCE_CPU_SHARDING_TYPES)})")
    if problems:
        raise UserError(f"{where}: plan does not match this job: " + "; ".join(problems) + " -- re-run `store-rec plan` for this model and cluster")


def load_plan(
    path: os.PathLike,
    tables: Sequence[Any],
    world_size: int,
    device: Any,
    module_path: Optional[str] = None,
    local_world_size: Optional[int] = None,
    ec_module_path: Optional[str] = None,
) -> Any:
    """Read a plan JSON and return a ``torchrec.distributed.types.ShardingPlan`` for this job.

    Args:
        path: the plan file written by ``store-rec plan``.
        tables: the job's EmbeddingBagConfigs (``store_rec.models.tables.embedding_tables``).
        world_size: the job's world size.
        device: the job's compute device (``"cuda"``, ``"cpu"`` or a ``torch.device``).
        module_path: FQN of the EmbeddingBagCollection inside the model the plan is applied to
            (e.g. ``"sparse_arch.embedding_bag_collection"`` for a DLRM); default: the file's
            ``module_path`` (``""``: the plan applies to a bare EBC).
        local_world_size: the job's ranks per host; default: ``$LOCAL_WORLD_SIZE`` (set by torchrun /
            torchx / elastic launch), not checked when neither is known. See :func:`check_plan`.
        ec_module_path: FQN of the model's EmbeddingCollection (history tokens), whose tables
            (``EmbeddingConfig`` s among ``tables``) get their own module plan; default: the file's
            ``ec_module_path``.

    Raises:
        UserError: the plan was made for another world size, device, ranks per host (cuda) or table
            set (rows/dims).
    """
    from torch.distributed._shard.sharding_spec import EnumerableShardingSpec, ShardMetadata
    from torchrec.distributed.sharding_plan import placement
    from torchrec.distributed.types import EmbeddingModuleShardingPlan, ParameterSharding, ShardingPlan

    d = read_plan(path)
    if local_world_size is None and os.environ.get("LOCAL_WORLD_SIZE", "").isdigit():
        local_world_size = int(os.environ["LOCAL_WORLD_SIZE"])
    check_plan(d, tables, world_size, str(getattr(device, "type", device)), where=str(path), local_world_size=local_world_size)
    from store_rec.distributed.sequence import is_sequence_table

    local = int(d.get("local_world_size") or world_size)
    dev = d["compute_device"]
    bag_plan, seq_plan = EmbeddingModuleShardingPlan(), EmbeddingModuleShardingPlan()
    for t in tables:
        mod_plan = seq_plan if is_sequence_table(t) else bag_plan
        e = d["plan"][t.name]
        spec = None
        if e["shards"]:
            spec = EnumerableShardingSpec(
                [
                    ShardMetadata(shard_offsets=list(s["offsets"]), shard_sizes=list(s["sizes"]), placement=placement(dev, int(s["rank"]), local))
                    for s in e["shards"]
                ]
            )
        mod_plan[t.name] = ParameterSharding(
            sharding_type=e["sharding_type"], compute_kernel=e["compute_kernel"], ranks=list(e["ranks"]), sharding_spec=spec
        )
    plans = {d.get("module_path", "") if module_path is None else module_path: bag_plan} if len(bag_plan) or not len(seq_plan) else {}
    if len(seq_plan):
        plans[d.get("ec_module_path", "ec") if ec_module_path is None else ec_module_path] = seq_plan
    return ShardingPlan(plans)


def ebc_module_path(model: Any) -> str:
    """FQN of the single ``EmbeddingBagCollection`` inside ``model`` (the module given to DMP).

    Pass it as ``load_plan(..., module_path=ebc_module_path(model))``: TorchRec keys a ShardingPlan by
    the sharded module's path (e.g. ``model.sparse_arch.embedding_bag_collection`` for the models of
    ``store_rec.models.factory.build_model``).
    """
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    paths = [n for n, m in model.named_modules() if isinstance(m, EmbeddingBagCollection)]
    if len(paths) != 1:
        raise UserError(f"expected exactly one EmbeddingBagCollection in the model, found {len(paths)}: {paths}")
    return paths[0]


def ec_module_path(model: Any) -> Optional[str]:
    """FQN of the ``EmbeddingCollection`` inside ``model`` (the history tokens' tables), or None when it has
    none; more than one is an error (pass it as ``load_plan(..., ec_module_path=...)``)."""
    from torchrec.modules.embedding_modules import EmbeddingCollection

    paths = [n for n, m in model.named_modules() if isinstance(m, EmbeddingCollection)]
    if len(paths) > 1:
        raise UserError(f"expected at most one EmbeddingCollection in the model, found {len(paths)}: {paths}")
    return paths[0] if paths else None
