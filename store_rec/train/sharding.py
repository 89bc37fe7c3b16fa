"""Sharding the train wrapper: planner constraints from the ``sharding:`` config section, a plan
(planned by ``EmbeddingShardingPlanner`` or loaded from a ``store-rec plan`` file), the
``DistributedModelParallel`` built with it, and the pre-trained item vectors loaded into its shards.

A model with history tokens has an ``EmbeddingCollection`` (``RankingModel.embedding_collection``) next
to its ``EmbeddingBagCollection``: both are sharded in one plan (:func:`model_tables` lists the tables of
both, :func:`sparse_parameters` their weights for the fused in-backward optimizer; sharders and
per-device sharding types of the EC: :mod:`store_rec.distributed.sequence`).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Iterator, List, Optional

import torch
import torch.distributed as dist
from torch import nn

from store_rec.distributed.env import DistEnv
from store_rec.errors import UserError
from store_rec.train.config import TrainConfig

logger = logging.getLogger(__name__)


def _ranking_model(model: nn.Module) -> nn.Module:
    """The :class:`~store_rec.models.ranking.RankingModel` of ``model`` (itself, or a train wrapper's ``.model``)."""
    while not hasattr(model, "embedding_bag_collection") and isinstance(getattr(model, "model", None), nn.Module):
        model = model.model
    return model


def model_tables(model: nn.Module) -> List[Any]:
    """The tables DMP shards: the ``EmbeddingBagConfig`` s of the model's EBC, then the ``EmbeddingConfig`` s of
    its ``EmbeddingCollection`` (history tokens) when it has one. ``model``: a ``RankingModel`` or its
    train wrapper, before sharding (the tables may be on the meta device)."""
    m: Any = _ranking_model(model)
    tables: List[Any] = list(m.embedding_bag_collection.embedding_bag_configs())
    ec = getattr(m, "embedding_collection", None)
    if ec is not None:
        tables += list(ec.embedding_configs())
    return tables


def sparse_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The embedding tables' weights (EBC, and EC when the model has one): what the fused sparse optimizer
    is applied to in backward (``apply_optimizer_in_backward``)."""
    m: Any = _ranking_model(model)
    yield from m.embedding_bag_collection.parameters()
    ec = getattr(m, "embedding_collection", None)
    if ec is not None:
        yield from ec.parameters()


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
        for t in tables:  # EmbeddingCollection tables: build_constraints kept them to their cpu types
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
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.fbgemm_qcomm_codec import CommType, QCommsConfig, get_qcomm_codecs_registry
    from torchrec.distributed.sharding_plan import get_default_sharders

    kind = {"fp32": CommType.FP32, "fp16": CommType.FP16, "bf16": CommType.BF16, "fp8": CommType.FP8}
    registry = get_qcomm_codecs_registry(QCommsConfig(forward_precision=kind[q.forward], backward_precision=kind[q.backward]))
    with_codecs = (EmbeddingBagCollectionSharder, EmbeddingCollectionSharder)  # the EBC and the history EC
    return [type(s)(qcomm_codecs_registry=registry) if type(s) in with_codecs else s for s in get_default_sharders()]


def shard_model(wrapper: nn.Module, cfg: TrainConfig, env: DistEnv, tables: List[Any], plan_file: Optional[str]) -> nn.Module:
    """``DistributedModelParallel`` of ``wrapper`` (a :class:`~store_rec.models.ranking.RankingTrain`
    whose EBC -- and EC, with history tokens -- is on the meta device) with a planned or loaded plan.
    ``tables``: :func:`model_tables` of the wrapper (what the planner constraints and a plan file are
    checked against)."""
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner
    from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
    from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig
    from torchrec.distributed.sharding_plan import get_default_sharders

    from store_rec.distributed.sequence import with_store_rec_sharders

    # EBC: row_wise on cpu too; EC: no data_parallel on cpu
    sharders = with_store_rec_sharders(qcomms_sharders(cfg, env) or get_default_sharders())
    if plan_file:
        from store_rec.distributed.plan_io import ebc_module_path, ec_module_path, load_plan

        plan = load_plan(plan_file, tables, env.world_size, env.device, module_path=ebc_module_path(wrapper),
                         local_world_size=env.local_world_size, ec_module_path=ec_module_path(wrapper))
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
