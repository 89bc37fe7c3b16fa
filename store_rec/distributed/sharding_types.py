"""The embedding sharding types store_rec knows, and which of them run on CPU (no torch import).

One definition for the train config's validation, the train app's planner constraints and
``store-rec plan``. Values are TorchRec's ``ShardingType`` values.
"""

from __future__ import annotations

SHARDING_TYPES = ("data_parallel", "table_wise", "row_wise", "column_wise", "table_row_wise", "table_column_wise",
                  "grid_shard")
"""Every sharding type (TorchRec's, for compute_device cuda)."""
TORCHREC_CPU_SHARDING_TYPES = ("data_parallel", "table_wise", "column_wise", "table_column_wise")
"""Sharding types TorchRec itself offers for compute_device cpu (what the planner searches on cpu by default)."""
CPU_ROW_WISE_SHARDING_TYPES = ("row_wise", "table_row_wise")
"""Row-wise types store_rec also runs on cpu/gloo when asked for, through
:class:`store_rec.distributed.cpu_row_wise.CpuRowWiseEBCSharder` (docs/ROW_WISE_CPU.md)."""
CPU_SHARDING_TYPES = TORCHREC_CPU_SHARDING_TYPES + CPU_ROW_WISE_SHARDING_TYPES
"""Everything that runs on cpu/gloo (grid_shard stays cuda-only)."""

SEQUENCE_SHARDING_TYPES = ("data_parallel", "table_wise", "column_wise", "row_wise")
"""Sharding types of TorchRec 1.8's ``EmbeddingCollectionSharder`` (unpooled / sequence embeddings, the
history tokens' tables), for every device: no table_row_wise / table_column_wise / grid_shard."""
SEQUENCE_CPU_SHARDING_TYPES = ("table_wise", "column_wise", "row_wise")
"""What store_rec runs for ``EmbeddingCollection`` tables on cpu/gloo (checked sharded == unsharded on 2 gloo
ranks by ``tests/test_history_sharding.py``). data_parallel is left out: TorchRec places a data-parallel
EC table in fbgemm's dense TBE, whose cpu kernel returns *pooled* rows for an unpooled table (measured:
``split_with_sizes expects split_sizes to sum exactly to 4 ... got [3, 3]`` for B = 2 samples, 2 features, 6
ids), so the sequence output cannot be built (:class:`store_rec.distributed.sequence.CpuSequenceECSharder`
drops it from what the planner may pick on cpu)."""
