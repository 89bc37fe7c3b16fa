"""Test helper: a SID table as numpy arrays, read through the loader's reader (the only one)."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from store_rec.data.sid_table import read_sid_table


def read_sids(path) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Dict[str, Any]]:  # noqa: ANN001
    """``(ids int64[N], codes int64[N, K], sid_dedup int64[N] or None, metadata)`` of a SID table."""
    table, meta, cols = read_sid_table(path)
    ids = table.column("item").to_numpy().astype(np.int64)
    codes = np.stack([table.column(c).to_numpy() for c in cols], 1).astype(np.int64)
    dedup = table.column("sid_dedup").to_numpy().astype(np.int64) if "sid_dedup" in table.column_names else None
    return ids, codes, dedup, meta
