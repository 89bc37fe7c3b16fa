"""SID table parquet (``store-rec tokenize`` output): the format, its writer and its readers.

Columns: ``item`` int64 (unique), ``sid_0 .. sid_{K-1}`` int64 in ``[0, C)``, optional ``sid_dedup``
int64 (TIGER-style index among items sharing a tuple, :func:`dedup_tokens`); key-value metadata
``store_rec`` = JSON {"method", "num_sids", "codebook_size", "item_feature"}. Items absent from the
table get the OOV SID ``C`` when the loader attaches it (``vocab_size = C + 1``).

Written by the tokenizers (:func:`write_sid_table`, atomic); read by the loader (:func:`read_sid_table`)
and the training app (:func:`read_sid_table_metadata`, footer only).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from store_rec.errors import DataError
from store_rec.fileio import PathLike, atomic_path

logger = logging.getLogger(__name__)


def dedup_tokens(codes: np.ndarray) -> np.ndarray:
    """``codes: int64[N, K]`` -> ``sid_dedup int64[N]``: 0, 1, 2.. among items sharing a tuple (TIGER),
    in row order, so ``(codes, sid_dedup)`` is unique per item."""
    if len(codes) == 0:
        return np.zeros(0, np.int64)
    _, inv = np.unique(codes, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    order = np.argsort(inv, kind="stable")
    sorted_inv = inv[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_inv)) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(inv)]))
    out = np.empty(len(inv), np.int64)
    out[order] = np.arange(len(inv)) - group_start
    return out


def write_sid_table(path: PathLike, ids: np.ndarray, codes: np.ndarray, *, method: str, codebook_size: int,
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


def _sid_table_meta(path: Path, schema: pa.Schema) -> Dict[str, Any]:
    """The ``store_rec`` JSON metadata of a SID table's arrow schema (``{}`` when it has none)."""
    meta_raw = (schema.metadata or {}).get(b"store_rec")
    if not meta_raw:
        return {}
    try:
        meta = json.loads(meta_raw)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: metadata 'store_rec' is not JSON: {e}") from e
    if not isinstance(meta, dict):
        raise DataError(f"{path}: metadata 'store_rec' is not a JSON object: {meta!r}")
    return meta


def _check_sid_table_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: SID table not found (write one with `store-rec tokenize`)")


def read_sid_table_metadata(path: PathLike) -> Dict[str, Any]:
    """The ``store_rec`` metadata of a SID table (``method``, ``num_sids``, ``codebook_size``,
    ``item_feature``; ``{}`` when absent), read from the parquet footer only (no rows)."""
    path = Path(path)
    _check_sid_table_file(path)
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file: {e}") from e
    return _sid_table_meta(path, schema)


def read_sid_table(path: PathLike) -> Tuple[pa.Table, Dict[str, Any], List[str]]:
    """Read a SID table: (table, metadata dict, sid column names ``sid_0..sid_{K-1}`` in order)."""
    path = Path(path)
    _check_sid_table_file(path)
    try:
        table = pq.read_table(path)
    except pa.ArrowInvalid as e:
        raise DataError(f"{path}: not a readable parquet file: {e}") from e
    meta = _sid_table_meta(path, table.schema)
    if "item" not in table.column_names:
        raise DataError(f"{path}: SID table has no 'item' column (columns: {table.column_names})")
    k = 0
    while f"sid_{k}" in table.column_names:
        k += 1
    if k == 0:
        raise DataError(f"{path}: SID table has no sid_0 column (columns: {table.column_names})")
    _check_unique_items(path, table["item"])
    return table, meta, [f"sid_{i}" for i in range(k)]


def _check_unique_items(path: Path, items: Any) -> None:
    """Refuse a SID table that lists an item id twice (which row's SIDs would win is arbitrary)."""
    vals = items.drop_null().to_numpy(zero_copy_only=False) if items.null_count else items.to_numpy(zero_copy_only=False)
    uniq, counts = np.unique(vals, return_counts=True)
    if len(uniq) != len(vals):
        dup = uniq[counts > 1]
        raise DataError(f"{path}: column 'item' lists {len(dup)} item id(s) more than once (e.g. item {int(dup[0])}, "
                        f"{int(counts[counts > 1][0])} rows); a SID table has one row per item")


def sid_codebook_size(path: Path, meta: Dict[str, Any], table: pa.Table, cols: List[str]) -> int:
    """Codebook size C from the metadata (validated), else max SID + 1 with a warning."""
    if "codebook_size" in meta:
        c = meta["codebook_size"]
        if not isinstance(c, int) or c < 1:
            raise DataError(f"{path}: metadata codebook_size={c!r} is not a positive integer")
        return c
    c = max(int(pc.max(table[col]).as_py() or 0) for col in cols) + 1
    logger.warning("%s: no codebook_size in metadata 'store_rec'; using max SID + 1 = %d", path, c)
    return c


def sid_lookup(path: Path, table: pa.Table, cols: List[str], c: int, vocab: int, feature: str) -> Tuple[np.ndarray, np.ndarray]:
    """A read SID table as a lookup ``lut[k, id]`` (``int64 [K, vocab]``) over ``feature``'s ids ``0 .. vocab-1``,
    and the ids ``1 .. vocab-1`` it has no row for (they, and id 0, get the OOV SID ``C``).

    Raises :class:`DataError` naming the file, row and column: null items or SIDs, an item id outside
    the vocabulary, a SID outside ``[0, C)``."""
    if table["item"].null_count:
        raise DataError(f"{path}: column 'item' has nulls")
    items = table["item"].to_numpy(zero_copy_only=False).astype(np.int64)
    bad = np.flatnonzero((items < 0) | (items >= vocab))
    if len(bad):
        raise DataError(f"{path}: row {bad[0]}: item id {items[bad[0]]} outside the vocabulary [0, {vocab}) "
                        f"of feature {feature!r}")
    lut = np.full((len(cols), vocab), c, np.int64)
    for k, col in enumerate(cols):
        if table[col].null_count:
            raise DataError(f"{path}: column {col!r} has nulls")
        v = table[col].to_numpy(zero_copy_only=False).astype(np.int64)
        badk = np.flatnonzero((v < 0) | (v >= c))
        if len(badk):
            raise DataError(f"{path}: row {badk[0]}: {col}={v[badk[0]]} outside [0, {c}) (codebook_size C={c})")
        lut[k, items] = v
    covered = np.zeros(vocab, bool)
    covered[items] = True
    return lut, np.flatnonzero(~covered[1:]) + 1  # id 0 is the OOV item
