"""Row-wise sharding on CPU / gloo: a TorchRec EBC sharder that *offers* row_wise and table_row_wise on cpu.

TorchRec 1.8's ``EmbeddingBagCollectionSharder.sharding_types("cpu")`` returns only data_parallel,
table_wise, column_wise and table_column_wise; row_wise / table_row_wise / grid_shard are offered for
cuda (and mtia) only. The historical reason was that gloo had no reduce-scatter, which the row-wise
output dist (``PooledEmbeddingsReduceScatter`` -> ``torch.distributed.reduce_scatter``) needs; TorchRec's
CPU row-wise PR (#1396) was merged and reverted.

The gloo backend of the PyTorch this project pins (2.13) implements ``reduce_scatter`` and
``reduce_scatter_tensor`` (``tests/test_plan_row_wise_cpu.py`` checks it on 2 gloo ranks), so the only
remaining refusal is that list -- and only the *planner* reads it (``EmbeddingEnumerator`` asks the
sharder which types exist for the device). ``DistributedModelParallel`` given an explicit plan does not
consult it: TorchRec's stock sharder executes a cpu row-wise plan and matches the unsharded model
(same test). So :class:`CpuRowWiseEBCSharder` is needed wherever TorchRec's planner must *produce* a
row-wise plan on cpu (``store-rec plan``, or an in-job ``EmbeddingShardingPlanner`` with row-wise
constraints, as ``store-rec train`` runs); for applying a saved plan either sharder works.
grid_shard stays cuda-only here (not verified).

Use it where the planner runs (and, harmlessly, for DMP: on cuda it is TorchRec's sharder)::

    sharders = with_cpu_row_wise(get_default_sharders())
    plan = EmbeddingShardingPlanner(topology=..., constraints=...).collective_plan(model, sharders, pg)
    DistributedModelParallel(model, device=torch.device("cpu"), plan=plan, sharders=sharders)
"""

from __future__ import annotations

from typing import Any, List, Sequence

from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

from store_rec.distributed.sharding_types import CPU_ROW_WISE_SHARDING_TYPES


class CpuRowWiseEBCSharder(EmbeddingBagCollectionSharder):
    """``EmbeddingBagCollectionSharder`` that also offers row_wise and table_row_wise on cpu."""

    def sharding_types(self, compute_device_type: str) -> List[str]:
        types = list(super().sharding_types(compute_device_type))
        if compute_device_type == "cpu":
            types += [t for t in CPU_ROW_WISE_SHARDING_TYPES if t not in types]
        return types


def with_cpu_row_wise(sharders: Sequence[Any]) -> List[Any]:
    """``sharders`` with every plain ``EmbeddingBagCollectionSharder`` replaced by a
    :class:`CpuRowWiseEBCSharder` with the same fused params and comm codecs (other sharders kept)."""
    out: List[Any] = []
    for s in sharders:
        if type(s) is EmbeddingBagCollectionSharder:
            s = CpuRowWiseEBCSharder(fused_params=s.fused_params, qcomm_codecs_registry=s.qcomm_codecs_registry)
        out.append(s)
    return out
