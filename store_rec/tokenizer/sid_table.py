"""SID table parquet (``store-rec tokenize`` output), per the project contract.

Columns: ``item`` int64, ``sid_0 .. sid_{K-1}`` int64 in ``[0, C)``, optional ``sid_dedup`` int64;
key-value metadata ``store_rec`` = JSON {"method", "num_sids", "codebook_size", "item_feature"}.
Items absent from the table get the OOV SID ``C`` when the loader attaches it (``vocab_size = C + 1``).
Read one with :func:`store_rec.data.loader.read_sid_table` (metadata only:
:func:`store_rec.data.loader.read_sid_table_metadata`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

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
