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
