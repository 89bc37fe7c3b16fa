"""Avazu (Kaggle "Click-Through Rate Prediction") CSV -> prepared parquet dataset.

Input: one CSV (``.csv``, ``.csv.gz``, ``.txt``) or a directory of them, the 24 Kaggle columns
``id,click,hour,C1,banner_pos,site_*,app_*,device_*,C14..C21``. A file may have the Kaggle header
(any column order) or no header (then the 24 fields are in Kaggle order). ``id`` is read as a string
(it exceeds int64) and dropped.

Output features (defaults in :class:`AvazuConfig`, mirrored by ``configs/datasets/avazu.yaml`` and
explained in ``datasets/avazu.md``):

* label ``label`` (= ``click``), no dense features;
* ``hour`` (YYMMDDHH) -> ``hour_of_day`` (0..23) and ``weekday`` (0 = Monday) static features;
* every other categorical column is an ``id`` feature (high-cardinality, tokenized by STORE), a
  ``static`` feature of a semantic group, or dropped — by config;
* ``user_key`` (int64, for GAUC): the distinct values of the ``user_key`` columns (default
  ``device_ip``) numbered 1.. in order of first appearance.

Split: ``split: auto`` (default) is a seeded random 80/10/10 split when the data has one distinct
hour (the public samples) and a chronological split by hour otherwise (hours never straddle splits).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from store_rec.config import check, to_dict
from store_rec.data.csvio import check_label, drop_or_raise, first_line, list_source_files, read_delimited
from store_rec.data.dsconfig import check_layout, load_dataset_config
from store_rec.data.schema import ID, STATIC, DatasetSchema
from store_rec.data.tabular import FeatureSpec, ordered_split_codes, random_split_codes, split_tables, write_prepared

logger = logging.getLogger(__name__)

AVAZU_COLUMNS = [
    "id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id",
    "app_domain", "app_category", "device_id", "device_ip", "device_model", "device_type",
    "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
]
#: categorical columns of the output (raw columns except id/click/hour, plus the two hour features)
AVAZU_FEATURES = [c for c in AVAZU_COLUMNS if c not in ("id", "click", "hour")] + ["hour_of_day", "weekday"]
USER_KEY_COLUMN = "user_key"


@dataclass
class AvazuConfig:
    """Which Avazu columns are id / static features and how to split (see datasets/avazu.md)."""

    id_features: List[str] = field(default_factory=lambda: [
        "site_id", "site_domain", "app_id", "app_domain", "device_id", "device_ip", "device_model", "C14", "C17"])
    static_groups: Dict[str, List[str]] = field(default_factory=lambda: {
        "site": ["site_category"],
        "app": ["app_category"],
        "device": ["device_type", "device_conn_type"],
        "ad": ["C1", "banner_pos", "C15", "C16", "C18", "C19", "C20", "C21"],
        "context": ["hour_of_day", "weekday"],
    })
    drop: List[str] = field(default_factory=list)
    min_count: int = 2
    min_count_per_feature: Dict[str, int] = field(default_factory=dict)
    user_key: List[str] = field(default_factory=lambda: ["device_ip"])
    split: Literal["auto", "random", "time"] = "auto"
    train_frac: float = 0.8
    valid_frac: float = 0.1

    def __post_init__(self) -> None:
        check_layout(AVAZU_FEATURES, self.id_features, self.static_groups, self.drop,
                     {"user_key": [c for c in self.user_key]})
        for k in self.user_key:
            check(k in AVAZU_COLUMNS, "user_key", f"unknown column {k!r}")
        check(len(self.user_key) >= 1, "user_key", "name at least one column")
        for k, v in self.min_count_per_feature.items():
            check(k in AVAZU_FEATURES, f"min_count_per_feature.{k}", f"unknown column {k!r}")
            check(v >= 1, f"min_count_per_feature.{k}", "must be >= 1")
        check(self.min_count >= 1, "min_count", "must be >= 1")
        check(0 < self.train_frac < 1 and 0 <= self.valid_frac and self.train_frac + self.valid_frac < 1,
              "train_frac", "need 0 < train_frac, 0 <= valid_frac and train_frac + valid_frac < 1")


def _read(files, skip_bad_rows: bool):
    tables, skipped, rows = [], 0, []
    for path in files:
        line = first_line(path)
        first = line.split(",", 1)[0].strip().strip('"')
        header = not first.isdigit()
        raw = read_delimited(path, AVAZU_COLUMNS, ",", header, skip_bad_rows, dict_columns=AVAZU_FEATURES)
        raw = check_label(raw, "click", skip_bad_rows)
        hour = raw.table.column("hour").combine_chunks()
        ts = pc.strptime(pc.if_else(pc.match_substring_regex(hour, r"^\d{8}$"), hour, None),
                         format="%y%m%d%H", unit="s", error_is_null=True)
        bad = np.asarray(ts.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        raw = drop_or_raise(raw, bad, skip_bad_rows,
                            lambda i, hour=hour: f"column 'hour': expected YYMMDDHH, got {hour[i].as_py()!r}")
        skipped += raw.skipped
        tables.append(raw.table)
        rows.append(raw.table.num_rows)
        logger.info("%s: %d rows%s", path, raw.table.num_rows, f" ({raw.skipped} skipped)" if raw.skipped else "")
    return pa.concat_tables(tables).unify_dictionaries().combine_chunks(), skipped, rows


def prepare_avazu(source: str, out: os.PathLike, *, config=None, seed: int = 0, overwrite: bool = False,
                  skip_bad_rows: bool = False, splits=None, resplit: bool = False, **overrides) -> DatasetSchema:
    """Prepare Avazu from ``source`` (file or directory) into ``out``; returns the schema.

    ``config``: YAML path / mapping / :class:`AvazuConfig`; ``overrides``: config keys (e.g.
    ``min_count=1``) that win over it.
    """
    t0 = time.perf_counter()
    cfg = load_dataset_config(AvazuConfig, config, overrides)
    from store_rec.data.splits import codes_from_file_rows, files_and_given_splits

    files, given = files_and_given_splits(source, splits, resplit, lambda p: list_source_files(p, "avazu"))
    table, skipped, rows_per_file = _read(files, skip_bad_rows)
    n = table.num_rows
    ts = pc.strptime(table.column("hour"), format="%y%m%d%H", unit="s")
    hour_key = pc.cast(table.column("hour"), pa.int64()).to_numpy()
    cols = {c: table.column(c) for c in AVAZU_FEATURES[:-2]}
    cols["hour_of_day"] = pc.cast(pc.hour(ts), pa.string())
    cols["weekday"] = pc.cast(pc.day_of_week(ts), pa.string())
    cols["label"] = pc.cast(pc.cast(table.column("click"), pa.float64()), pa.float32())
    key = pc.cast(table.column(cfg.user_key[0]), pa.string())
    for c in cfg.user_key[1:]:
        key = pc.binary_join_element_wise(pc.fill_null(key, ""), pc.fill_null(pc.cast(table.column(c), pa.string()), ""), "|")
    enc = pc.dictionary_encode(pc.fill_null(key, "")).combine_chunks()
    cols[USER_KEY_COLUMN] = pa.array(enc.indices.to_numpy().astype(np.int64) + 1)
    data = pa.table(cols)

    hours = np.unique(hour_key)
    method = cfg.split if cfg.split != "auto" else ("random" if len(hours) == 1 else "time")
    fr = (cfg.train_frac, cfg.valid_frac)
    if given is not None:
        codes, order = codes_from_file_rows(rows_per_file, given), None
        split_method = "given: " + ", ".join(f"{f.name} -> {s}" for f, s in zip(files, given)) + " (kept row for row)"
    elif method == "random":
        codes, order = random_split_codes(n, seed, fr), None
        split_method = f"random: seeded (seed {seed}) i.i.d. per row, {fr[0]:g}/{fr[1]:g}/{1 - sum(fr):g}"
    else:
        codes, order = ordered_split_codes(hour_key, fr), np.argsort(hour_key, kind="stable")
        split_method = (f"time: by hour ({len(hours)} distinct), whole hours to train until {fr[0]:g} of rows, "
                        f"then valid until {sum(fr):g}, rest test")
    splits = split_tables(data, codes, order)

    features = []
    for name in cfg.id_features:
        features.append(FeatureSpec(name, ID, None, cfg.min_count_per_feature.get(name, cfg.min_count)))
    for g, names in cfg.static_groups.items():
        for name in names:
            features.append(FeatureSpec(name, STATIC, g, cfg.min_count_per_feature.get(name, cfg.min_count)))
    params = {"seed": seed, "files": [str(f) for f in files], "skipped_rows": skipped,
              "distinct_hours": int(len(hours)), "config": to_dict(cfg)}
    schema = write_prepared(out, overwrite=overwrite, dataset="avazu", splits=splits, label="label", dense=[],
                            features=features, user_key=USER_KEY_COLUMN, split_method=split_method,
                            source=str(source), params=params)
    logger.info("avazu: %d rows prepared in %.2fs", n, time.perf_counter() - t0)
    return schema
