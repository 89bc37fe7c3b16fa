"""Sharding TorchRec ``EmbeddingCollection`` s (unpooled sequence embeddings: the history tokens' tables)
next to the model's ``EmbeddingBagCollection``.

A model with history (``RankingModel.embedding_collection`` not None) holds two sharded modules: the EBC
(pooled lookups, one vector per feature and sample) and the EC (one vector per id: ``Tensor[sum(lengths),
D]`` per feature). ``DistributedModelParallel`` shards both in one plan, keyed by each module's path;
the planner gets both sharders.

What differs for an EC (TorchRec 1.8):

* sharding types: ``EmbeddingCollectionSharder`` offers data_parallel, table_wise, column_wise and
  row_wise on every device (:data:`store_rec.distributed.sharding_types.SEQUENCE_SHARDING_TYPES`); no
  table_row_wise / table_column_wise / grid_shard. Its row-wise output dist is a sequence all-to-all
  (no reduce-scatter), so the cpu row-wise workaround of :mod:`store_rec.distributed.cpu_row_wise`
  does not apply: row_wise already runs on gloo.
* data_parallel does not run on cpu: the data-parallel lookup is fbgemm's dense TBE, whose cpu kernel
  pools an unpooled table (see :data:`~store_rec.distributed.sharding_types.SEQUENCE_CPU_SHARDING_TYPES`).
  :class:`CpuSequenceECSharder` leaves it out of what the planner may pick on cpu, and plans are
  checked for it (:func:`store_rec.distributed.plan_io.check_plan`).
* every EC table has the same embedding dim (TorchRec's rule for an ``EmbeddingCollection``).

Use :func:`with_store_rec_sharders` where sharders are made (train, predict, ``store-rec plan``).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from store_rec.distributed.sharding_types import SEQUENCE_CPU_SHARDING_TYPES


class CpuSequenceECSharder(EmbeddingCollectionSharder):
    """``EmbeddingCollectionSharder`` that offers only the types that run on cpu for compute device cpu
    (no data_parallel); TorchRec's own list elsewhere."""

    def sharding_types(self, compute_device_type: str) -> List[str]:
        types = list(super().sharding_types(compute_device_type))
        if compute_device_type == "cpu":
            types = [t for t in types if t in SEQUENCE_CPU_SHARDING_TYPES]
        return types


def with_store_rec_sharders(sharders: Sequence[Any]) -> List[Any]:
    """``sharders`` with TorchRec's EBC sharder replaced by :class:`~store_rec.distributed.cpu_row_wise.
    CpuRowWiseEBCSharder` and its EC sharder by :class:`CpuSequenceECSharder` (same fused params and comm
    codecs; on cuda both behave as TorchRec's); other sharders kept."""
    from store_rec.distributed.cpu_row_wise import with_cpu_row_wise

    out: List[Any] = []
    for s in with_cpu_row_wise(sharders):
        if type(s) is EmbeddingCollectionSharder:
            s = CpuSequenceECSharder(fused_params=s.fused_params, qcomm_codecs_registry=s.qcomm_codecs_registry,
                                     use_index_dedup=s._use_index_dedup)
        out.append(s)
    return out


def is_sequence_table(table: Any) -> bool:
    """True for an ``EmbeddingConfig`` (a table of an ``EmbeddingCollection``), False for an
    ``EmbeddingBagConfig`` (an EBC table)."""
    return not isinstance(table, EmbeddingBagConfig)


def sequence_sharding_types(cpu: bool) -> List[str]:
    """What an EC table may be sharded as on this device (the planner's search for ``auto``)."""
    from store_rec.distributed.sharding_types import SEQUENCE_SHARDING_TYPES

    return list(SEQUENCE_CPU_SHARDING_TYPES if cpu else SEQUENCE_SHARDING_TYPES)


PLAN_EBC_PATH, PLAN_EC_PATH = "ebc", "ec"
"""Module paths of the EBC and the EC in :class:`BagsAndSequences` (what ``store-rec plan`` plans)."""


class BagsAndSequences(nn.Module):
    """An EBC (``ebc``, optional) and an EC (``ec``) side by side: the module ``store-rec plan`` plans when
    there are EmbeddingCollection tables (:func:`store_rec.distributed.planning.planner.planning_module`).

    ``forward(features: KJT) -> {feature: Tensor}``: ``Tensor[B, D]`` (pooled) for each bag feature,
    ``Tensor[sum(lengths), D]`` (one row per id) for each sequence feature."""

    def __init__(self, ebc: Optional[EmbeddingBagCollection], ec: EmbeddingCollection) -> None:
        super().__init__()
        if ebc is not None:
            self.add_module(PLAN_EBC_PATH, ebc)
        self.add_module(PLAN_EC_PATH, ec)

    def forward(self, features: KeyedJaggedTensor) -> Dict[str, torch.Tensor]:
        out: Dict[str, torch.Tensor] = {}
        if hasattr(self, PLAN_EBC_PATH):
            out.update(getattr(self, PLAN_EBC_PATH)(features).to_dict())
        out.update({k: jt.values() for k, jt in getattr(self, PLAN_EC_PATH)(features).items()})
        return out
