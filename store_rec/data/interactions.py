"""``kind: interactions``: a user-item log -> CTR rows, sampled negatives, a per-user split, sequences.

Input: rows of (user, item[, time][, label or behavior][, side features]) described by the same YAML
schema as :mod:`store_rec.data.table` (the user column: ``role: user_key`` or ``user_key: true``; the
item: ``role: id, item_key: true``). Labels:

* a ``label`` column (0/1): explicit labels; default negatives ``none``;
* a ``behavior`` column + ``interactions.positive: [buy, cart]``: rows whose behavior is listed are
  positives, the others explicit negatives; default negatives ``none``;
* neither: implicit feedback, every row a positive; default negatives ``uniform`` (ratio 4).

Negatives (``interactions.negatives``): ``uniform`` over the catalog (items of the log) or
``popularity`` (drawn as often as the item is a positive, so popularity alone cannot separate
positives from negatives), never an item the user interacted with (rejection sampling,
:mod:`store_rec.data.sampling`), ``ratio`` per positive, seeded; a negative goes to its positive's
split and copies its row (user, context, time), with the item and the item's side features
(``item_side: true`` columns, e.g. category: the value of the item's last row) replaced.
``interactions.negatives.sample_from: train_positives`` (default): a **train** row's negatives are
drawn only from items with a train positive (for ``popularity``: weighted by their train positives),
so an item whose positives are all in valid / test never enters training as a negative only (it
would share the OOV SID with every such item and teach "OOV = negative"); valid / test negatives
are drawn from the whole catalog as before. ``catalog``: every split's from the whole catalog.
``split_positives``: every split's negatives from the items of that split's positives (``popularity``:
weighted by them; ``uniform``: each distinct item alike), so an item new in valid / test is a negative
there too (:func:`store_rec.data.sampling.split_matched_negatives`).
``params`` records ``negatives_sample_from`` and ``train_negatives_resampled``.

Split (``split.method``): ``leave_last_out`` (default): per user in time order, the last positive
(with the explicit negatives just before it and its sampled negatives) -> test, the second-to-last ->
valid, the rest -> train; users with < 3 positives are train only. ``time``: ``valid_from`` /
``test_from`` cutoffs, or cutoffs at the ``train_frac`` / ``train_frac + valid_frac`` time quantiles.
``random``: per row. Given splits (``--splits``) are kept.

``sequences.parquet``: per user the item vocab ids of the **train** positives in time order, so
``store-rec pretrain --data DIR`` trains on the dataset's own id space.

History (``interactions.history_len`` N > 0): role ``history`` lists ``hist_<item>``, one
``hist_<side>`` per ``interactions.history_sides`` column (default: every single-valued
``item_side: true`` column; the value on the event's own row) and ``hist_gap``: per row the user's
last <= N positives strictly before it in time (the timestamp column, else log order), never a
test-split positive; sampled negatives share their positive's history (:mod:`store_rec.data.history`).

Memory: the log's columns are held in memory (dictionary-encoded strings, ~10-40 bytes per row);
the table kind streams.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from store_rec.config import to_dict
from store_rec.data.history import HISTORY_ROW_COLUMN, HistorySource, build_history_index
from store_rec.data.sampling import (pair_keys, resample_train_negatives, sample_negatives, split_matched_negatives,
                                    users_with_every_item)
from store_rec.data.schema import SPLITS, DatasetSchema, SequenceInfo
from store_rec.data.splits import leave_last_out_codes, time_cutoff_codes, time_quantile_cutoffs
from store_rec.data.table import (USER_KEY_COLUMN, TableConfig, _col_as_string, _multi, _parsed_chunks, _Plan,
                                  cutoff_value, hash_column, write_sequences)
from store_rec.data.tabular import FeatureSpec, write_prepared
from store_rec.errors import DataError, UserError

logger = logging.getLogger(__name__)


def _read_log(cfg: TableConfig, files: List[Tuple[Path, Optional[str]]], plan: _Plan
              ) -> Tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray, int]:
    """All rows -> (table of the sparse columns as dictionary strings, label, time, given codes, skipped)."""
    tables, labels, times, codes = [], [], [], []
    skipped = 0
    keep = cfg.sparse_columns + [c for c in cfg.with_role("user_key")] + cfg.with_role("dense")
    beh = next(iter(cfg.with_role("behavior")), None)
    positive = set(cfg.interactions.positive)
    for i, (path, split) in enumerate(files):
        for first, t, c, num, sk in _parsed_chunks(plan, path, i, split):
            skipped += sk
            if cfg.label_column:
                lab = num[cfg.label_column]
            elif beh is not None:
                b = _col_as_string(t.column(beh))
                lab = np.asarray(pc.fill_null(pc.is_in(b, value_set=pa.array(sorted(positive), pa.string())),
                                              False).to_numpy(zero_copy_only=False), np.float64)
            else:
                lab = np.ones(t.num_rows)
            tcol = cfg.time_column
            tm = num[tcol] if tcol else np.arange(first, first + t.num_rows, dtype=np.float64) + i * 2.0 ** 40
            cols = {}
            for n in keep:
                col = t.column(n)
                if cfg.columns[n].role == "dense":
                    cols[n] = pa.array(num[n])
                elif pa.types.is_dictionary(col.type):
                    cols[n] = col
                else:
                    cols[n] = pc.dictionary_encode(_col_as_string(col))
            tables.append(pa.table(cols))
            labels.append(lab)
            times.append(tm)
            codes.append(c)
    if not tables:
        raise DataError(f"{files[0][0]}: no data rows")
    table = pa.concat_tables(tables).unify_dictionaries().combine_chunks()
    return table, np.concatenate(labels), np.concatenate(times), np.concatenate(codes), skipped


def _codes_of(col: pa.ChunkedArray) -> Tuple[np.ndarray, pa.Array]:
    """Dictionary column -> (``int64`` code per row (-1 null), dictionary); equal values get equal codes."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    arr = pc.dictionary_encode(pc.cast(arr, pa.string()))  # re-encode: a unified dictionary may repeat values
    idx = np.asarray(pc.fill_null(arr.indices, -1).to_numpy(zero_copy_only=False), np.int64)
    return idx, arr.dictionary


def _history(cfg: TableConfig, table: pa.Table, u: np.ndarray, tm: np.ndarray, label: np.ndarray,
             codes: np.ndarray, source: str) -> Optional[HistorySource]:
    """History of the log rows (sorted by user, time), or None when ``interactions.history_len`` is 0."""
    h = cfg.interactions
    if not h.history_len:
        return None
    icol = cfg.item_column
    assert icol is not None
    sides = h.history_sides if h.history_sides is not None else [
        c for c in cfg.sparse_columns if cfg.columns[c].item_side and not cfg.columns[c].multi_hot and c != icol]
    values: Dict[str, object] = {icol: table.column(icol)}
    for c in sides:
        spec = cfg.columns[c]
        values[c] = hash_column(table.column(c), spec, c) if spec.hash_buckets is not None else table.column(c)
    index = build_history_index(u, tm, (label > 0.5) & (codes != 2), h.history_len)
    tcol = cfg.time_column
    unit = (f"column {tcol!r} ({'seconds' if cfg.columns[tcol].time_format else 'its own unit or seconds for dates'})"
            if tcol else "log order (no timestamp column: gap = rows back in the log)")
    return HistorySource(index, icol, values, tm, unit)  # type: ignore[arg-type]


def prepare_interactions(cfg: TableConfig, files: List[Tuple[Path, Optional[str]]], how: str, out: os.PathLike, *,
                         seed: int, overwrite: bool, skip_bad_rows: bool, block_size: int, source: str
                         ) -> DatasetSchema:
    t0 = time.perf_counter()
    fmt = cfg.format  # per file when auto (e.g. CSV train, parquet test)
    sp = cfg.split
    method = sp.method
    if how == "given":
        if method not in ("auto", "given"):
            raise UserError(f"split.method {method!r} but the input has given splits: they are kept; pass --resplit "
                            "to split again by the rule")
        method = "given"
    elif method == "given":
        raise UserError("split.method: given needs --splits train=...,valid=...,test=...")
    elif method == "auto":
        method = "leave_last_out"
    plan = _Plan(cfg=cfg, fmt=fmt, header=cfg.header, delimiter=cfg.delimiter, seed=seed,
                 method="random" if method != "given" else "given", cutoffs=(None, None),
                 skip_bad_rows=skip_bad_rows, block_size=block_size)
    table, label, tm, given_codes, skipped = _read_log(cfg, files, plan)
    ucol, icol = cfg.user_column, cfg.item_column
    assert ucol is not None and icol is not None
    u, user_dict = _codes_of(table.column(ucol))
    it, item_dict = _codes_of(table.column(icol))
    bad = (u < 0) | (it < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{source}: row {i + 1}: missing {'user' if u[i] < 0 else 'item'} "
                        f"({ucol!r} / {icol!r} must be set on every row)")
    # users with too few rows
    if cfg.interactions.min_user_interactions > 1:
        cnt = np.bincount(u)
        ok = cnt[u] >= cfg.interactions.min_user_interactions
        table, label, tm, given_codes, u, it = (table.filter(pa.array(ok)), label[ok], tm[ok], given_codes[ok],
                                                u[ok], it[ok])
    if not len(u):
        raise UserError(f"{source}: no rows left (interactions.min_user_interactions)")
    order = np.lexsort((np.arange(len(u)), tm, u))
    table = table.take(pa.array(order))
    label, tm, given_codes, u, it = label[order], tm[order], given_codes[order], u[order], it[order]

    tcol = cfg.time_column
    if method == "given":
        codes = given_codes
        split_method = "given: the input files' own splits, kept row for row"
    elif method == "leave_last_out":
        codes = leave_last_out_codes(u, label)
        split_method = ("leave_last_out: per user in time order the last positive (+ the rows just before it and its "
                        "negatives) -> test, the second-to-last -> valid, the rest -> train; users with < 3 positives "
                        "train only")
    elif method == "time":
        fmt_t = cfg.columns[tcol].time_format if tcol else None
        if sp.valid_from is not None:
            cuts = (cutoff_value(sp.valid_from, fmt_t), cutoff_value(sp.test_from, fmt_t))
        else:
            cuts = time_quantile_cutoffs(tm, sp.train_frac, sp.valid_frac)
        codes = time_cutoff_codes(tm, *cuts)  # type: ignore[arg-type]
        split_method = f"time: {tcol} < {cuts[0]:g} train, < {cuts[1]:g} valid, rest test"
    else:
        codes = given_codes  # random per row, drawn in _parse_chunk
        split_method = (f"random: seeded (seed {seed}) per row, {sp.train_frac:g}/{sp.valid_frac:g}/"
                        f"{1 - sp.train_frac - sp.valid_frac:g}")

    # negatives
    neg = cfg.interactions.negatives
    has_labels = bool(cfg.label_column or cfg.with_role("behavior"))
    strategy = neg.strategy if neg.strategy != "auto" else ("none" if has_labels else "uniform")
    k = neg.ratio if strategy != "none" else 0
    pos_idx = np.flatnonzero(label > 0.5)
    if not len(pos_idx):
        raise UserError(f"{source}: no positive row (check interactions.positive / the label column)")
    n_items = len(item_dict)
    resampled = 0
    if k > 0:
        stride = n_items + 1
        keys = pair_keys(u, it, stride)
        items_all = np.unique(it)
        if strategy == "uniform":
            catalog = items_all
        else:  # popularity-matched: an item is drawn in proportion to its positives
            catalog = np.repeat(np.arange(n_items), np.bincount(it[pos_idx], minlength=n_items))
        full = users_with_every_item(keys, stride, len(items_all))
        if len(full):
            raise DataError(f"{source}: user {user_dict[int(full[0])].as_py()!r} interacted with every item of the catalog "
                            f"({len(items_all)}): no negative can be sampled (set interactions.negatives.strategy: none)")
        parent = np.repeat(pos_idx, k)
        if neg.sample_from == "split_positives":
            neg_items = split_matched_negatives(
                np.random.default_rng([seed, 4]), u[parent], codes[parent], it[pos_idx], codes[pos_idx], keys, stride,
                neg.max_rounds, hint="; lower interactions.negatives.ratio or set interactions.negatives.sample_from: "
                                     "train_positives", weighted=strategy != "uniform")
        else:
            neg_items = sample_negatives(np.random.default_rng([seed, 2]), catalog, u[parent], keys, stride,
                                         neg.max_rounds, hint="; lower interactions.negatives.ratio")
        if neg.sample_from == "train_positives":
            tp = it[(codes == 0) & (label > 0.5)]
            train_catalog = np.unique(tp) if strategy == "uniform" else np.sort(tp)  # popularity: by train positives
            before = neg_items
            neg_items = resample_train_negatives(
                np.random.default_rng([seed, 3]), neg_items, u[parent], codes[parent] == 0, train_catalog, keys,
                stride, neg.max_rounds, hint="; lower interactions.negatives.ratio or set "
                                              "interactions.negatives.sample_from: catalog")
            resampled = int((neg_items != before).sum())
    else:
        neg_items, parent = np.zeros(0, np.int64), np.zeros(0, np.int64)

    n = len(u)
    last_row_of_item = np.full(n_items, -1, np.int64)
    last_row_of_item[it] = np.arange(n)  # later rows win: the item's most recent side features
    side = [c for c in cfg.sparse_columns if cfg.columns[c].item_side and c != icol]
    src_rows = np.concatenate([np.arange(n), parent])
    full_t = table.take(pa.array(src_rows))
    cols: Dict[str, object] = {}
    item_rows = np.concatenate([np.arange(n), last_row_of_item[neg_items]])
    for c in table.column_names:
        if c == icol or c in side:
            cols[c] = table.column(c).take(pa.array(item_rows))
        else:
            cols[c] = full_t.column(c)
    all_label = np.concatenate([label, np.zeros(len(parent))]).astype(np.float32)
    all_codes = np.concatenate([codes, codes[parent]])
    all_u = np.concatenate([u, u[parent]])
    lab_name = cfg.label_column or "label"
    data: Dict[str, object] = {lab_name: pa.array(all_label)}
    for c in cfg.with_role("dense"):
        data[c] = cols[c]
    for c in cfg.sparse_columns:
        spec = cfg.columns[c]
        col = cols[c]
        if spec.multi_hot:
            data[c] = _multi(col, spec.multi_hot)
            if spec.hash_buckets is not None:
                lists = data[c]
                data[c] = pa.ListArray.from_arrays(pc.subtract(lists.offsets, lists.offsets[0]),  # type: ignore
                                                   pa.array(hash_column(lists.flatten(), spec, c)))  # type: ignore
        elif spec.hash_buckets is not None:
            data[c] = pa.array(hash_column(col, spec, c))
        else:
            data[c] = col
    data[USER_KEY_COLUMN] = pa.array(all_u + 1, pa.int64())
    history = _history(cfg, table, u, tm, label, codes, source)
    if history is not None:
        data[HISTORY_ROW_COLUMN] = pa.array(src_rows, pa.int64())
    full_table = pa.table(data)
    # each labelled row followed by its negatives
    sort_key = np.concatenate([np.arange(n) * (k + 1),
                               parent * (k + 1) + 1 + np.tile(np.arange(k), len(pos_idx)) if k > 0
                               else np.zeros(0, np.int64)])
    row_order = np.argsort(sort_key, kind="stable")
    oc = all_codes[row_order]
    splits = {name: full_table.take(pa.array(row_order[oc == i])) for i, name in enumerate(SPLITS)}

    train_pos = np.flatnonzero((codes == 0) & (label > 0.5))

    def extra(w, vocabs) -> Optional[SequenceInfo]:
        items = vocabs[icol].encode(pc.cast(item_dict.take(pa.array(it[train_pos])), pa.string()))
        return write_sequences(w, u[train_pos] + 1, items, tm[train_pos], icol, vocabs[icol].size - 1,
                               "timestamp" if tcol else "file")

    features = [FeatureSpec(c, cfg.columns[c].role, cfg.columns[c].group, cfg.min_count_of(c),
                            multi_hot=bool(cfg.columns[c].multi_hot), hash_buckets=cfg.columns[c].hash_buckets)
                for c in cfg.sparse_columns]
    params = {"seed": seed, "kind": "interactions", "files": [f"{f}" + (f" ({s})" if s else "") for f, s in files],
              "skipped_rows": skipped, "item_feature": icol, "positives": int(len(pos_idx)),
              "sampled_negatives": int(len(parent)), "negatives": strategy, "users": int(len(np.unique(u))),
              "negatives_sample_from": neg.sample_from if k > 0 else None, "train_negatives_resampled": resampled,
              "items": int(n_items), "config": to_dict(cfg)}
    schema = write_prepared(out, overwrite=overwrite, dataset=cfg.name or "interactions", splits=splits,
                            label=lab_name, dense=cfg.with_role("dense"), features=features,
                            user_key=USER_KEY_COLUMN, split_method=split_method, source=source, params=params,
                            extra=extra, history=history)
    logger.info("interactions: %d rows (%d positives, %d sampled negatives) prepared in %.2fs",
                len(all_label), len(pos_idx), len(parent), time.perf_counter() - t0)
    return schema
