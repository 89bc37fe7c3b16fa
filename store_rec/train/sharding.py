"""Sharding the train wrapper: planner constraints from the ``sharding:`` config section, a plan
(planned by ``EmbeddingShardingPlanner`` or loaded from a ``store-rec plan`` file), the
``DistributedModelParallel`` built with it, and the pre-trained item vectors loaded into its shards.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn

from store_rec.distributed.env import DistEnv
from store_rec.errors import UserError
from store_rec.train.config import TrainConfig

logger = logging.getLogger(__name__)


def planner_constraints(cfg: TrainConfig, tables: List[Any], device: torch.device) -> Dict[str, Any]:
    """``ParameterConstraints`` per table from ``sharding:`` (global lists, then per-table overrides),
    built by :func:`store_rec.distributed.planning.build_constraints` as ``store-rec plan`` builds them
    (``--strategy auto``; on CPU the search defaults to TorchRec's CPU sharding types)."""
    from store_rec.distributed.planning import TableOverride, build_constraints
    from store_rec.distributed.sharding_types import CPU_SHARDING_TYPES

    sh = cfg.sharding
    overrides: Dict[str, TableOverride] = {}
    for name, over in sh.tables.items():  # each key given per table wins over the global one
        overrides[name] = TableOverride(sharding_types=over.sharding_types or sh.sharding_types,
                                        compute_kernels=over.compute_kernels or sh.compute_kernels)
    every = TableOverride(sharding_types=sh.sharding_types, compute_kernels=sh.compute_kernels)
    out = build_constraints(tables, "auto", None, {}, overrides, cpu=device.type == "cpu",
                            auto_defaults=every if (sh.sharding_types or sh.compute_kernels) else None,
                            overrides_key="sharding.tables")
    if device.type == "cpu":
        for t in tables:
            bad = [s for s in (out[t.name].sharding_types or []) if s not in CPU_SHARDING_TYPES]
            if bad:
                where = f"sharding.tables.{t.name}" if t.name in sh.tables and sh.tables[t.name].sharding_types else "sharding"
                raise UserError(f"{where}.sharding_types: {bad} need CUDA; on CPU use {list(CPU_SHARDING_TYPES)}")
    return out


def qcomms_sharders(cfg: TrainConfig, env: DistEnv) -> Optional[List[Any]]:
    """TorchRec's default sharders with quantized comms codecs (``sharding.qcomms``), or None when it is
    not set. The codecs (fbgemm's quantize/dequantize ops on the all-to-all / reduce-scatter payloads of
    sharded tables) need CUDA + NCCL: on CPU the config is refused before anything is built."""
    q = cfg.sharding.qcomms
    if q is None:
        return None
    if env.device.type != "cuda":
        raise UserError(f"sharding.qcomms: quantized comms (forward {q.forward}, backward {q.backward}) need CUDA + NCCL; "
                        f"this job runs on {env.device.type} / {env.backend}: remove sharding.qcomms")
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.fbgemm_qcomm_codec import CommType, QCommsConfig, get_qcomm_codecs_registry
    from torchrec.distributed.sharding_plan import get_default_sharders

    kind = {"fp32": CommType.FP32, "fp16": CommType.FP16, "bf16": CommType.BF16, "fp8": CommType.FP8}
    registry = get_qcomm_codecs_registry(QCommsConfig(forward_precision=kind[q.forward], backward_precision=kind[q.backward]))
    return [EmbeddingBagCollectionSharder(qcomm_codecs_registry=registry) if type(s) is EmbeddingBagCollectionSharder else s
            for s in get_default_sharders()]


def shard_model(wrapper: nn.Module, cfg: TrainConfig, env: DistEnv, tables: List[Any], plan_file: Optional[str]) -> nn.Module:
    """``DistributedModelParallel`` of ``wrapper`` (a :class:`~store_rec.models.ranking.RankingTrain`
    whose EBC is on the meta device) with a planned or loaded plan."""
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner
    from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
    from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig
    from torchrec.distributed.sharding_plan import get_default_sharders

    from store_rec.distributed.cpu_row_wise import with_cpu_row_wise

    sharders = with_cpu_row_wise(qcomms_sharders(cfg, env) or get_default_sharders())  # row_wise on cpu too
    if plan_file:
        from store_rec.distributed.plan_io import ebc_module_path, load_plan

        plan = load_plan(plan_file, tables, env.world_size, env.device, module_path=ebc_module_path(wrapper), local_world_size=env.local_world_size)
    else:
        # TopologyFactory with TorchRec's default capacities and bandwidths (what the bare Topology(...)
        # constructor gives, without its "use TopologyFactory ... the job will fail" warning), and a fixed
        # share of memory reserved (TorchRec's default HeuristicalStorageReservation over-estimates the
        # dense part of a meta-device model and warns about it)
        topology = TopologyFactory.create_topology(
            TrainerConfig(world_size=env.world_size, local_world_size=env.local_world_size),
            kernel_config=KernelConfig(compute_device=env.device.type))
        planner = EmbeddingShardingPlanner(topology=topology, constraints=planner_constraints(cfg, tables, env.device),
                                           storage_reservation=FixedPercentageStorageReservation(cfg.sharding.storage_reservation))
        plan = planner.collective_plan(wrapper, sharders, dist.GroupMember.WORLD)
    if env.rank == 0:
        logger.info("sharding plan:\n%s", plan)
    return DistributedModelParallel(module=wrapper, device=env.device, plan=plan, sharders=sharders)


def load_online_item_embeddings(dmp: nn.Module, cfg: TrainConfig, schema) -> int:  # noqa: ANN001
    """Online SIDs: pre-trained vectors (``model.online.embeddings``) into this rank's shards of the
    ``item_feature`` table, before training (a resumed run then overwrites them from the checkpoint).
    Returns the rows written on this rank (0 when nothing is configured)."""
    m = cfg.model
    if m.sid_source != "online" or m.tokenizer == "none" or not m.online.embeddings:
        return 0
    from store_rec.distributed.embedding_io import load_pretrained_into_ebc
    from store_rec.tokenizer.embeddings import load_embeddings

    ids, emb = load_embeddings(m.online.embeddings, expected_dim=m.embedding_dim)
    n = load_pretrained_into_ebc(dmp, f"t_{m.item_feature}", ids, emb)
    logger.info("model.online.embeddings: %d pre-trained %s vectors from %s (%d rows on this rank)", len(ids),
                m.item_feature, m.online.embeddings, n)
    return n
