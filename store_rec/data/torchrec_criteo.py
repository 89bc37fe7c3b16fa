"""TorchRec's preprocessed Criteo (``day_{i}_{dense,sparse,labels}.npy``) -> prepared dataset.

The files are the ones ``torchrec.datasets.criteo.BinaryCriteoUtils.tsv_to_npys`` writes for its DLRM
example (and ``shuffle`` / ``sparse_to_contiguous`` keep the layout):

=====================  ===============  ==========  ==================================================
file                   dtype            shape       content
=====================  ===============  ==========  ==================================================
``day_i_dense.npy``    float32          [N, 13]     I1..I13, already ``log(x - min + 2)``-transformed
``day_i_sparse.npy``   int64 (int32)    [N, 26]     C1..C26 as ``int(hex, 16)`` (or contiguous ids)
``day_i_labels.npy``   int32            [N, 1]      0 / 1
=====================  ===============  ==========  ==================================================

Dense values are kept as they are (TorchRec's transform; they must be finite). Sparse ids are taken
``% num_embeddings`` (``num_embeddings_per_feature`` as in TorchRec's ``dlrm_main``), so the
embedding tables are the ones a TorchRec DLRM user already sizes; no vocabulary file. Roles: the
Criteo default layout (:class:`store_rec.data.criteo.CriteoConfig`: id features by Kaggle
cardinality, static groups ``medium`` / ``low``), changeable the same way.

Split ``torchrec`` (default): TorchRec's own: days ``0 .. D-2`` train, the last day's first half
valid, second half test (``InMemoryBinaryCriteoIterDataPipe`` stages). ``random``: seeded per row.
Reading is memory-mapped, ``chunk_rows`` rows at a time (bounded memory).
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional

import numpy as np
import pyarrow as pa

from store_rec.config import check, to_dict
from store_rec.data.criteo import CATEGORICAL, DENSE, _by_cardinality
from store_rec.data.dsconfig import check_layout, load_dataset_config
from store_rec.data.schema import ID, SPLITS, STATIC, DatasetSchema, SparseFeature
from store_rec.data.streaming import row_uniform
from store_rec.data.splits import random_codes
from store_rec.errors import DataError, UserError

logger = logging.getLogger(__name__)

DAY_RE = re.compile(r"^day_(\d+)_dense\.npy$")


@dataclass
class TorchRecCriteoConfig:
    num_embeddings: int = 100_000
    num_embeddings_per_feature: List[int] = field(default_factory=list)
    id_features: List[str] = field(default_factory=lambda: _by_cardinality(10_000, float("inf")))
    static_groups: Dict[str, List[str]] = field(default_factory=lambda: {
        "medium": _by_cardinality(1_000, 10_000), "low": _by_cardinality(0, 1_000)})
    drop: List[str] = field(default_factory=list)
    split: Literal["torchrec", "random"] = "torchrec"
    train_frac: float = 0.8
    valid_frac: float = 0.1
    chunk_rows: int = 1_000_000

    def __post_init__(self) -> None:
        check_layout(CATEGORICAL, self.id_features, self.static_groups, self.drop)
        check(self.num_embeddings >= 1, "num_embeddings", "must be >= 1")
        check(not self.num_embeddings_per_feature or len(self.num_embeddings_per_feature) == 26,
              "num_embeddings_per_feature", "26 values (C1..C26), as TorchRec's dlrm_main takes them")
        check(all(v >= 1 for v in self.num_embeddings_per_feature), "num_embeddings_per_feature", "each >= 1")
        check(0 < self.train_frac < 1 and 0 <= self.valid_frac and self.train_frac + self.valid_frac < 1,
              "train_frac", "need 0 < train_frac, 0 <= valid_frac and train_frac + valid_frac < 1")
        check(self.chunk_rows >= 1, "chunk_rows", "must be >= 1")

    def buckets(self) -> List[int]:
        return list(self.num_embeddings_per_feature) or [self.num_embeddings] * 26


def find_days(source: Optional[str]) -> List[int]:
    if not source:
        raise UserError("torchrec_criteo: --source is required (the directory of day_{i}_dense/sparse/labels.npy)")
    d = Path(source)
    if not d.is_dir():
        raise UserError(f"{d}: --source must be the directory holding TorchRec's day_{{i}}_*.npy files")
    days = sorted(int(m.group(1)) for f in d.iterdir() if (m := DAY_RE.match(f.name)))
    if not days:
        raise UserError(f"{d}: no day_{{i}}_dense.npy files (TorchRec's preprocessed Criteo layout)")
    for i in days:
        for kind in ("sparse", "labels"):
            if not (d / f"day_{i}_{kind}.npy").is_file():
                raise UserError(f"{d}: day_{i}_dense.npy has no day_{i}_{kind}.npy beside it")
    return days


def _load(path: Path, cols: int) -> np.ndarray:
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: cannot read as .npy: {e}") from None
    if a.ndim == 1 and cols == 1:
        a = a.reshape(-1, 1)
    if a.ndim != 2 or a.shape[1] != cols:
        raise DataError(f"{path}: expected shape [N, {cols}], got {list(a.shape)}")
    return a


def prepare_torchrec_criteo(source: str, out: os.PathLike, *, config=None, seed: int = 0, overwrite: bool = False,
                            skip_bad_rows: bool = False, **overrides) -> DatasetSchema:
    """Prepare TorchRec's preprocessed Criteo day files in directory ``source`` into ``out``."""
    from store_rec.data.writer import DatasetWriter

    t0 = time.perf_counter()
    cfg = load_dataset_config(TorchRecCriteoConfig, config, overrides)
    days = find_days(source)
    root = Path(source)
    buckets = dict(zip(CATEGORICAL, cfg.buckets()))
    kept = [c for c in CATEGORICAL if c not in cfg.drop]
    kept_idx = [CATEGORICAL.index(c) for c in kept]
    fields = [pa.field("label", pa.float32())] + [pa.field(d, pa.float32()) for d in DENSE]
    fields += [pa.field(c, pa.int64()) for c in kept]
    schema_pa = pa.schema(fields)
    skipped = 0
    with DatasetWriter(out, overwrite=overwrite) as w:
        writers = {s: w.split(s, schema_pa, label="label") for s in SPLITS}
        for k, day in enumerate(days):
            dense = _load(root / f"day_{day}_dense.npy", 13)
            sparse = _load(root / f"day_{day}_sparse.npy", 26)
            labels = _load(root / f"day_{day}_labels.npy", 1)
            n = len(dense)
            if len(sparse) != n or len(labels) != n:
                raise DataError(f"{root}: day {day}: dense has {n} rows, sparse {len(sparse)}, labels {len(labels)}")
            last = k == len(days) - 1
            half = int(np.ceil(n / 2.0))
            for a in range(0, n, cfg.chunk_rows):
                b = min(n, a + cfg.chunk_rows)
                d = np.asarray(dense[a:b], np.float32)
                y = np.asarray(labels[a:b, 0])
                bad = ~np.isfinite(d).all(1) | ~np.isin(y, (0, 1))
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    if not skip_bad_rows:
                        what = (f"label {int(y[i])} is not 0/1" if not np.isin(y[i], (0, 1))
                                else "a dense value is not finite")
                        raise DataError(f"{root}/day_{day}_*.npy: row {a + i}: {what} "
                                        "(use --skip-bad-rows to skip such rows)")
                    skipped += int(bad.sum())
                keep = ~bad
                s = np.asarray(sparse[a:b], np.int64)[:, kept_idx]
                cols = {"label": pa.array(y[keep].astype(np.float32))}
                for j, name in enumerate(DENSE):
                    cols[name] = pa.array(d[keep, j])
                for j, name in enumerate(kept):
                    cols[name] = pa.array(np.mod(s[keep, j], buckets[name]).astype(np.int64))
                t = pa.table(cols, schema=schema_pa)
                rows = np.arange(a, b)[keep]
                if cfg.split == "random":
                    codes = random_codes(row_uniform(seed, day, a, b - a)[keep], cfg.train_frac, cfg.valid_frac)
                elif not last:
                    codes = np.zeros(len(rows), np.int8)
                else:
                    codes = np.where(rows < half, 1, 2).astype(np.int8)
                for i, sname in enumerate(SPLITS):
                    sel = codes == i
                    if sel.any():
                        writers[sname].write(t.filter(pa.array(sel)))
        if writers["train"].rows == 0:
            raise UserError(f"{root}: the train split is empty (split: torchrec needs at least 2 day files: days "
                            "0..D-2 train, the last day valid/test; or use --set split=random)")
        features = [SparseFeature(name=c, role=ID, vocab_size=buckets[c]) for c in cfg.id_features]
        features += [SparseFeature(name=c, role=STATIC, vocab_size=buckets[c], group=g)
                     for g, names in cfg.static_groups.items() for c in names]
        order = {c: i for i, c in enumerate(kept)}
        features.sort(key=lambda f: order[f.name])
        split_method = ("torchrec: days 0..D-2 train, the last day's first half valid, second half test (TorchRec's "
                        "InMemoryBinaryCriteoIterDataPipe stages)" if cfg.split == "torchrec" else
                        f"random: seeded (seed {seed}) per row, {cfg.train_frac:g}/{cfg.valid_frac:g}")
        params = {"seed": seed, "days": days, "skipped_rows": skipped, "config": to_dict(cfg),
                  "dense_transform": "as TorchRec wrote it: log(x - min + 2)", "sparse": "id % num_embeddings"}
        schema = DatasetSchema(dataset="criteo", label="label", dense=list(DENSE), sparse=features, user_key=None,
                               split_method=split_method, source=str(source), params=params)
        w.commit(schema)
    logger.info("torchrec_criteo: %d day file(s) prepared in %.2fs", len(days), time.perf_counter() - t0)
    return schema
