"""Criteo (Kaggle "Display Advertising Challenge" / Criteo 1TB day files) -> prepared parquet dataset.

Input: one file or a directory of files, either

* the Kaggle / terabyte TSV format: ``label, I1..I13, C1..C26`` tab-separated, no header, integers
  for I*, 8-hex-digit hashes for C*, empty = missing (``train.txt``, ``day_0`` .. ``day_23``), or
* the CSV-with-header variant (``label,I1,...,C26``; pandas writes integers as floats, ``260.0``).

Dense I1..I13: missing -> 0, negatives clamped to 0, then ``log(1 + x)`` (float32). This is the
transform of the DLRM reference (facebookresearch/dlrm); TorchRec's ``tsv_to_npys`` instead shifts by
the *global minimum* of the file (``x - min + 2``, then ``log``), which depends on the data and
therefore differs between train and test files — clamping is file-independent.

Categorical C1..C26, ``categorical: vocab`` (default): a vocabulary per column fitted on train with
``min_count`` (default 10), OOV id 0. ``categorical: hash``: the **id features** get
``int(value, 16) % hash_buckets`` like TorchRec's ``criteo`` utilities (missing -> ``int("0", 16)`` = 0),
no vocab file. Static-group features are low-cardinality by construction (< 10k distinct values in
the default layout), so giving them ``hash_buckets`` (10M) rows would waste memory: in hash mode they
keep a train vocabulary (exact, tiny) unless ``static_hash_buckets`` is set, in which case they are
hashed into that many buckets. ``hash_buckets_per_feature`` names columns hashed into their own
bucket count in hash mode, static or id.

Split: ``random`` (default, seeded 80/10/10) or ``sequential`` (row order over the files in natural
name order, so ``day_0 .. day_23`` split chronologically: first 80 % train, next 10 % valid, rest test).
Criteo has no user column: ``user_key`` is None (no GAUC).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from store_rec.config import check, to_dict
from store_rec.data.csvio import check_label, check_numeric, first_line, list_source_files, read_delimited
from store_rec.data.dsconfig import check_layout, load_dataset_config
from store_rec.data.schema import ID, STATIC, DatasetSchema
from store_rec.data.tabular import FeatureSpec, random_split_codes, split_tables, write_prepared
from store_rec.errors import DataError

logger = logging.getLogger(__name__)

DENSE = [f"I{i}" for i in range(1, 14)]
CATEGORICAL = [f"C{i}" for i in range(1, 27)]
CRITEO_COLUMNS = ["label", *DENSE, *CATEGORICAL]

#: Kaggle train cardinalities of C1..C26 (the ones DLRM / TorchRec configs use), used for the default
#: layout: >= 10,000 distinct values -> id feature; 1,000 .. 9,999 -> static "medium"; < 1,000 -> "low".
KAGGLE_CARDINALITY = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27,
                      14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]


def _by_cardinality(lo: int, hi: float) -> List[str]:
    return [c for c, n in zip(CATEGORICAL, KAGGLE_CARDINALITY) if lo <= n < hi]


@dataclass
class CriteoConfig:
    """Criteo prepare options (see datasets/criteo.md)."""

    categorical: Literal["vocab", "hash"] = "vocab"
    min_count: int = 10
    min_count_per_feature: Dict[str, int] = field(default_factory=dict)
    hash_buckets: int = 10_000_000
    hash_buckets_per_feature: Dict[str, int] = field(default_factory=dict)
    static_hash_buckets: Optional[int] = None
    id_features: List[str] = field(default_factory=lambda: _by_cardinality(10_000, float("inf")))
    static_groups: Dict[str, List[str]] = field(default_factory=lambda: {
        "medium": _by_cardinality(1_000, 10_000), "low": _by_cardinality(0, 1_000)})
    drop: List[str] = field(default_factory=list)
    split: Literal["random", "sequential"] = "random"
    train_frac: float = 0.8
    valid_frac: float = 0.1

    def __post_init__(self) -> None:
        check_layout(CATEGORICAL, self.id_features, self.static_groups, self.drop)
        check(self.min_count >= 1, "min_count", "must be >= 1")
        check(self.hash_buckets >= 1, "hash_buckets", "must be >= 1")
        check(self.static_hash_buckets is None or self.static_hash_buckets >= 1, "static_hash_buckets",
              "must be >= 1 (or null: static features keep a vocabulary in hash mode)")
        for key, d in (("min_count_per_feature", self.min_count_per_feature),
                       ("hash_buckets_per_feature", self.hash_buckets_per_feature)):
            for k, v in d.items():
                check(k in CATEGORICAL, f"{key}.{k}", f"unknown column {k!r} (known: C1..C26)")
                check(v >= 1, f"{key}.{k}", "must be >= 1")
        check(0 < self.train_frac < 1 and 0 <= self.valid_frac and self.train_frac + self.valid_frac < 1,
              "train_frac", "need 0 < train_frac, 0 <= valid_frac and train_frac + valid_frac < 1")


def hash_buckets_of(cfg: CriteoConfig) -> Dict[str, int]:
    """Column -> bucket count for every column that is hashed (the rest get a train vocabulary).

    ``categorical: vocab``: none. ``categorical: hash``: ``hash_buckets_per_feature`` entries, then
    every id feature with ``hash_buckets``, then the static features with ``static_hash_buckets``
    when it is set (when it is None they keep a vocabulary).
    """
    if cfg.categorical != "hash":
        return {}
    out = {c: cfg.hash_buckets for c in cfg.id_features}
    if cfg.static_hash_buckets is not None:
        out.update({c: cfg.static_hash_buckets for names in cfg.static_groups.values() for c in names})
    out.update(cfg.hash_buckets_per_feature)
    return {c: b for c, b in out.items() if c not in cfg.drop}


def dense_transform(col: pa.ChunkedArray) -> np.ndarray:
    """Raw dense strings -> ``float32[N]``: missing -> 0, negatives -> 0, then log(1 + x)."""
    x = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    x = np.nan_to_num(np.asarray(x, np.float64), nan=0.0)
    return np.log1p(np.maximum(x, 0.0)).astype(np.float32)


def hash_column(col: pa.ChunkedArray, buckets: int, name: str, path_hint: str) -> np.ndarray:
    """``int(value or "0", 16) % buckets`` for every row, as TorchRec does; ``int64[N]``."""
    enc = pc.dictionary_encode(col).combine_chunks()
    uniq = enc.dictionary.to_pylist()
    try:
        hashed = np.array([int(v, 16) % buckets for v in uniq], dtype=np.int64)
    except ValueError:
        bad = next(v for v in uniq if not _is_hex(v))
        raise DataError(f"{path_hint}: column {name!r}: value {bad!r} is not hexadecimal "
                        "(categorical: hash needs hex values; use categorical: vocab)") from None
    idx = enc.indices.to_numpy(zero_copy_only=False)
    out = np.zeros(len(enc), np.int64)  # null (missing) -> int("0", 16) % buckets = 0
    valid = ~np.asarray(enc.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if len(hashed):
        out[valid] = hashed[idx[valid].astype(np.int64)]
    return out


def _is_hex(v: str) -> bool:
    try:
        int(v, 16)
        return True
    except ValueError:
        return False


def _read(files, skip_bad_rows: bool):
    tables, skipped, rows = [], 0, []
    for path in files:
        line = first_line(path)
        delim = "\t" if "\t" in line else ","
        header = line.split(delim, 1)[0].strip().strip('"') == "label"
        raw = read_delimited(path, CRITEO_COLUMNS, delim, header, skip_bad_rows, dict_columns=CATEGORICAL)
        raw = check_label(raw, "label", skip_bad_rows)
        raw = check_numeric(raw, DENSE, skip_bad_rows)
        skipped += raw.skipped
        tables.append(raw.table)
        rows.append(raw.table.num_rows)
        logger.info("%s: %d rows%s", path, raw.table.num_rows, f" ({raw.skipped} skipped)" if raw.skipped else "")
    return pa.concat_tables(tables).unify_dictionaries().combine_chunks(), skipped, rows


def prepare_criteo(source: str, out: os.PathLike, *, config=None, seed: int = 0, overwrite: bool = False,
                   skip_bad_rows: bool = False, splits=None, resplit: bool = False, **overrides) -> DatasetSchema:
    """Prepare Criteo from ``source`` (file or directory) into ``out``; returns the schema.

    ``splits`` (``{"train": PATH, "valid": PATH, "test": PATH}``) or files named train/valid(dev)/test in
    the source directory: those splits are kept row for row (``resplit`` splits them again by ``split``)."""
    from store_rec.data.splits import codes_from_file_rows, files_and_given_splits

    t0 = time.perf_counter()
    cfg = load_dataset_config(CriteoConfig, config, overrides)
    files, given = files_and_given_splits(  # terabyte: day_0 .. day_23
        source, splits, resplit, lambda p: list_source_files(p, "criteo", name_re=r"^day_\d+$"))
    table, skipped, rows_per_file = _read(files, skip_bad_rows)
    n = table.num_rows
    cols: Dict[str, pa.Array] = {"label": pc.cast(pc.cast(table.column("label"), pa.float64()), pa.float32())}
    for d in DENSE:
        cols[d] = pa.array(dense_transform(table.column(d)))
    kept = [c for c in CATEGORICAL if c not in cfg.drop]
    buckets = hash_buckets_of(cfg)
    for c in kept:
        if c in buckets:
            cols[c] = pa.array(hash_column(table.column(c), buckets[c], c, str(source)))
        else:
            cols[c] = table.column(c)
    data = pa.table(cols)

    fr = (cfg.train_frac, cfg.valid_frac)
    if given is not None:
        codes = codes_from_file_rows(rows_per_file, given)
        split_method = "given: " + ", ".join(f"{f.name} -> {s}" for f, s in zip(files, given)) + " (kept row for row)"
    elif cfg.split == "random":
        codes = random_split_codes(n, seed, fr)
        split_method = f"random: seeded (seed {seed}) i.i.d. per row, {fr[0]:g}/{fr[1]:g}/{1 - sum(fr):g}"
    else:
        pos = np.arange(n) / n
        codes = np.where(pos < fr[0], 0, np.where(pos < sum(fr), 1, 2)).astype(np.int8)
        split_method = (f"sequential: row order over files in natural name order, first {fr[0]:g} train, "
                        f"next {fr[1]:g} valid, rest test")
    splits = split_tables(data, codes)

    def spec(name: str, role: str, group) -> FeatureSpec:
        return FeatureSpec(name, role, group, cfg.min_count_per_feature.get(name, cfg.min_count),
                           hash_buckets=buckets.get(name))

    features = [spec(c, ID, None) for c in cfg.id_features]
    features += [spec(c, STATIC, g) for g, names in cfg.static_groups.items() for c in names]
    params = {"seed": seed, "files": [str(f) for f in files], "skipped_rows": skipped,
              "dense_transform": "log1p(max(x, 0)), missing -> 0", "config": to_dict(cfg)}
    schema = write_prepared(out, overwrite=overwrite, dataset="criteo", splits=splits, label="label", dense=DENSE,
                            features=features, user_key=None, split_method=split_method, source=str(source),
                            params=params)
    logger.info("criteo: %d rows prepared in %.2fs", n, time.perf_counter() - t0)
    return schema
