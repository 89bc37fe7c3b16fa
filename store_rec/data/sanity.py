"""Sanity figures of a prepared dataset, computed from its parquet files (any dataset kind).

* label rate per split;
* **item-popularity AUC** on test: each test row scored by its item's number of positives in train.
  About 0.5: popularity alone does not separate positives from negatives (e.g. popularity-matched
  negatives). Far above 0.5: positives are popular items (usual for CTR; with uniformly sampled
  negatives a model can score well by learning counts). **Far below 0.5 (< 0.4) is the wrong
  direction**: negatives are more popular than positives, e.g. sampled negatives drawn from head
  items while positives are tail items, or a split that put new items in test; a ranking model
  evaluated there learns the sampling, not the users. A warning says so;
* share of test rows (and of distinct test items) whose item never occurs in train;
* rows per user (users, mean, median) when there is a user key.

Reading is column-wise and row-group by row-group (bounded memory: per-item counters of the item
vocabulary size and the distinct user keys).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pyarrow.parquet as pq

from store_rec.data.schema import SPLITS, DatasetSchema

logger = logging.getLogger(__name__)

SANITY_FILE = "sanity.json"
WRONG_DIRECTION_AUC = 0.4


def item_feature_of(schema: DatasetSchema) -> Optional[str]:
    """The dataset's item feature: ``sequences.item_feature``, else ``params["item_feature"]``."""
    name: Optional[str] = schema.sequences.item_feature if schema.sequences else None
    if name is None and isinstance(schema.params, dict):
        found = schema.params.get("item_feature")
        name = found if isinstance(found, str) else None
    if name is None or name not in schema.sparse_names or schema.feature(name).multi_hot:
        return None
    return name


def _columns(root: Path, files: List[str], cols: List[str]):
    for f in files:
        pf = pq.ParquetFile(root / f)
        for rg in range(pf.num_row_groups):
            t = pf.read_row_group(rg, columns=cols)
            yield {c: t.column(c).to_numpy() for c in cols}


def _add(acc: np.ndarray, ids: np.ndarray, weights: Optional[np.ndarray] = None) -> np.ndarray:
    b = np.bincount(ids, weights=weights, minlength=len(acc))
    if len(b) > len(acc):
        acc = np.concatenate([acc, np.zeros(len(b) - len(acc))])
    acc[: len(b)] += b
    return acc


def popularity_auc(score_pos: np.ndarray, score_neg: np.ndarray, pos_count: np.ndarray, neg_count: np.ndarray) -> float:
    """AUC of ranking by a per-item score: items with ``pos_count`` positive and ``neg_count`` negative
    test rows, all rows of an item scored ``score`` (ties count one half). ``score_pos`` = ``score_neg``
    = per-item scores (two names for clarity at the call site)."""
    p, n = pos_count.sum(), neg_count.sum()
    if p == 0 or n == 0:
        return float("nan")
    uniq, inv = np.unique(score_pos, return_inverse=True)
    P = np.bincount(inv, weights=pos_count, minlength=len(uniq))
    N = np.bincount(inv, weights=neg_count, minlength=len(uniq))
    neg_below = np.r_[0.0, np.cumsum(N)[:-1]]
    return float((P * (neg_below + 0.5 * N)).sum() / (p * n))


def dataset_sanity(path: os.PathLike, schema: Optional[DatasetSchema] = None) -> Dict[str, Any]:
    """The figures above as a dict (``warnings``: list of strings)."""
    root = Path(path)
    schema = schema or DatasetSchema.load(root)
    out: Dict[str, Any] = {"label_rate": {}, "rows": {}, "warnings": []}
    for s in SPLITS:
        info = schema.splits.get(s)
        if info is None:
            continue
        out["rows"][s] = info.rows
        out["label_rate"][s] = (info.positives / info.rows) if info.rows else None
        if info.rows and info.positives in (0, info.rows):
            out["warnings"].append(f"{s}: every label is {1 if info.positives else 0}: AUC is undefined there")
    item = item_feature_of(schema)
    out["item_feature"] = item
    lab = schema.label
    if item is not None and schema.splits.get("train") and schema.splits.get("test"):
        train_any = np.zeros(0)
        train_pos = np.zeros(0)
        for d in _columns(root, schema.splits["train"].files, [item, lab]):
            ids = d[item].astype(np.int64)
            train_any = _add(train_any, ids)
            train_pos = _add(train_pos, ids, (d[lab] > 0.5).astype(np.float64))
        test_pos = np.zeros(0)
        test_neg = np.zeros(0)
        for d in _columns(root, schema.splits["test"].files, [item, lab]):
            ids = d[item].astype(np.int64)
            y = (d[lab] > 0.5).astype(np.float64)
            test_pos = _add(test_pos, ids, y)
            test_neg = _add(test_neg, ids, 1.0 - y)
        m = max(len(train_any), len(test_pos))
        pad = (lambda a: np.concatenate([a, np.zeros(m - len(a))]))
        train_any, train_pos, test_pos, test_neg = map(pad, (train_any, train_pos, test_pos, test_neg))
        test_rows = test_pos + test_neg
        if test_rows.sum() > 0:
            seen = train_any > 0
            seen[0] = False  # the OOV id: an item that is unknown to train
            auc = popularity_auc(train_pos, train_pos, test_pos, test_neg)
            out["item_popularity_auc"] = None if np.isnan(auc) else round(auc, 4)
            out["test_rows_item_unseen_in_train"] = round(float(test_rows[~seen].sum() / test_rows.sum()), 4)
            present = test_rows > 0
            out["test_items_unseen_in_train"] = round(float((present & ~seen).sum() / max(present.sum(), 1)), 4)
            if not np.isnan(auc) and auc < WRONG_DIRECTION_AUC:
                out["warnings"].append(
                    f"item-popularity AUC on test is {auc:.3f} (< {WRONG_DIRECTION_AUC}): negatives are MORE popular than "
                    "positives, the wrong direction for real clicks; check the negative sampling (popularity-matched "
                    "negatives vs tail positives) and the split (new items only in test) before trusting AUCs")
            if out["test_rows_item_unseen_in_train"] > 0.5:
                out["warnings"].append(f"{out['test_rows_item_unseen_in_train']:.0%} of test rows have an item never "
                                       "seen in train: item embeddings cannot help there")
    if schema.user_key:
        keys: List[np.ndarray] = []
        counts: List[np.ndarray] = []
        for s in SPLITS:
            info = schema.splits.get(s)
            if not info:
                continue
            for d in _columns(root, info.files, [schema.user_key]):
                k, c = np.unique(d[schema.user_key].astype(np.int64), return_counts=True)
                keys.append(k)
                counts.append(c)
                if len(keys) >= 32:
                    keys, counts = _merge(keys, counts)
        if keys:
            keys, counts = _merge(keys, counts)
            c = counts[0]
            out["users"] = int(len(c))
            out["rows_per_user"] = {"mean": round(float(c.mean()), 2), "median": float(np.median(c)),
                                    "max": int(c.max())}
    return out


def _merge(keys: List[np.ndarray], counts: List[np.ndarray]):
    k = np.concatenate(keys)
    c = np.concatenate(counts)
    u, inv = np.unique(k, return_inverse=True)
    return [u], [np.bincount(inv, weights=c).astype(np.int64)]


def format_sanity(s: Dict[str, Any]) -> str:
    """The figures as report lines."""
    lines = ["  sanity: label rate " + ", ".join(
        f"{k} {v:.4f}" if v is not None else f"{k} n/a" for k, v in s.get("label_rate", {}).items())]
    if "item_popularity_auc" in s:
        auc = s["item_popularity_auc"]
        lines.append(f"          item-popularity AUC on test ({s['item_feature']}, train positives): "
                     f"{auc if auc is not None else 'n/a'}; test rows with an item unseen in train "
                     f"{s['test_rows_item_unseen_in_train']:.1%} (distinct test items {s['test_items_unseen_in_train']:.1%})")
    else:
        lines.append("          item-popularity AUC: n/a (no item key)" if s.get("item_feature") is None
                     else "          item-popularity AUC: n/a (no train or test rows)")
    if "rows_per_user" in s:
        r = s["rows_per_user"]
        lines.append(f"          users {s['users']:,}, rows per user mean {r['mean']}, median {r['median']:g}, "
                     f"max {r['max']:,}")
    else:
        lines.append("          rows per user: n/a (no user key: GAUC is not computed for this dataset)")
    for w in s.get("warnings", []):
        lines.append(f"  WARNING: {w}")
    return "\n".join(lines)


def write_sanity(path: os.PathLike, schema: Optional[DatasetSchema] = None) -> Dict[str, Any]:
    """Compute the figures, save ``DIR/sanity.json`` and log the warnings."""
    from store_rec.fileio import atomic_write_json

    s = dataset_sanity(path, schema)
    atomic_write_json(Path(path) / SANITY_FILE, s, indent=2)
    for w in s["warnings"]:
        logger.warning("%s: %s", path, w)
    return s
