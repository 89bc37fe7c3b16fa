"""Row-wise sharding on CPU / gloo: a TorchRec EBC sharder that offers row_wise and table_row_wise on cpu.

TorchRec 1.8's ``EmbeddingBagCollectionSharder.sharding_types("cpu")`` returns only data_parallel,
table_wise, column_wise and table_column_wise; row_wise / table_row_wise / grid_shard are offered for
cuda (and mtia) only. The historical reason was that gloo had no reduce-scatter, which the row-wise
output dist (``PooledEmbeddingsReduceScatter`` -> ``torch.distributed.reduce_scatter``) needs; TorchRec's
CPU row-wise PR (#1396) was merged and reverted.

The gloo backend of the PyTorch this project pins (2.13) implements ``reduce_scatter`` and
``reduce_scatter_tensor`` (checked on 2 gloo ranks: see docs/ROW_WISE_CPU.md), so the only remaining
refusal is that list. :class:`CpuRowWiseEBCSharder` adds ``row_wise`` and ``table_row_wise`` for cpu;
everything else (input dist, the fused CPU TBE kernel, the reduce-scatter output dist and its
backward) is TorchRec's own code. ``store-rec plan --verify`` checks sharded == unsharded forward and
backward for both on 2 gloo ranks (``tests/test_plan_verify.py``). grid_shard stays cuda-only here
(not verified).

Use it wherever a plan with row-wise tables on cpu is applied::

    DistributedModelParallel(module, env, device=torch.device("cpu"), plan=plan,
                             sharders=[CpuRowWiseEBCSharder(fused_params=...)])
"""

from __future__ import annotations

from typing import List

from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.types import ShardingType

CPU_ROW_WISE_TYPES = (ShardingType.ROW_WISE.value, ShardingType.TABLE_ROW_WISE.value)


class CpuRowWiseEBCSharder(EmbeddingBagCollectionSharder):
    """``EmbeddingBagCollectionSharder`` that also offers row_wise and table_row_wise on cpu."""

    def sharding_types(self, compute_device_type: str) -> List[str]:
        types = list(super().sharding_types(compute_device_type))
        if compute_device_type == "cpu":
            types += [t for t in CPU_ROW_WISE_TYPES if t not in types]
        return types
