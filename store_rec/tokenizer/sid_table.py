"""SID table parquet (``store-rec tokenize`` output), per the project contract.

Columns: ``item`` int64, ``sid_0 .. sid_{K-1}`` int64 in ``[0, C)``, optional ``sid_dedup`` int64;
key-value metadata ``store_rec`` = JSON {"method", "num_sids", "codebook_size", "item_feature"}.
Items absent from the table get the OOV SID ``C`` when the loader attaches it (``vocab_size = C + 1``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from store_rec.errors import DataError
from store_rec.fileio import atomic_path
from store_rec.tokenizer.report import dedup_tokens


def write_sid_table(path: os.PathLike, ids: np.ndarray, codes: np.ndarray, *, method: str, codebook_size: int,
                    item_feature: str = "item", dedup: bool = False) -> Path:
    """Atomically write the SID table (temp file in the same directory, then rename)."""
    path = Path(path)
    ids = np.asarray(ids, np.int64)
    codes = np.asarray(codes, np.int64)
    if codes.ndim != 2 or codes.shape[0] != ids.shape[0]:
        raise DataError(f"{path}: codes shape {codes.shape} does not match {ids.shape[0]} ids")
    if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
        raise DataError(f"{path}: codes outside [0, {codebook_size})")
    cols = {"item": pa.array(ids)}
    for k in range(codes.shape[1]):
        cols[f"sid_{k}"] = pa.array(codes[:, k])
    if dedup:
        cols["sid_dedup"] = pa.array(dedup_tokens(codes))
    meta = {"method": method, "num_sids": int(codes.shape[1]), "codebook_size": int(codebook_size),
            "item_feature": item_feature}
    table = pa.table(cols).replace_schema_metadata({"store_rec": json.dumps(meta)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_sid_table(path: os.PathLike) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Dict[str, Any]]:
    """-> ``(ids int64[N], codes int64[N, K], sid_dedup int64[N] or None, metadata dict)``; validated."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: SID table not found")
    t = pq.read_table(path)
    raw = (t.schema.metadata or {}).get(b"store_rec")
    if raw is None:
        raise DataError(f"{path}: missing 'store_rec' metadata (not written by store-rec tokenize?)")
    meta = json.loads(raw)
    k, c = int(meta["num_sids"]), int(meta["codebook_size"])
    for name in ["item"] + [f"sid_{j}" for j in range(k)]:
        if name not in t.column_names:
            raise DataError(f"{path}: missing column {name!r}")
    ids = t.column("item").to_numpy().astype(np.int64)
    codes = np.stack([t.column(f"sid_{j}").to_numpy() for j in range(k)], 1).astype(np.int64)
    bad = np.flatnonzero(((codes < 0) | (codes >= c)).any(1))
    if bad.size:
        raise DataError(f"{path}: row {int(bad[0])} (item {int(ids[bad[0]])}) has a SID outside [0, {c})")
    dedup = t.column("sid_dedup").to_numpy().astype(np.int64) if "sid_dedup" in t.column_names else None
    return ids, codes, dedup, meta
