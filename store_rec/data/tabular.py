"""Shared last step of every real-dataset ``prepare``: split, fit vocabularies on train, encode, write.

Dataset modules (avazu, criteo, movielens) parse their raw files into Arrow tables of *raw* values
(label float32, dense float32, sparse columns as strings or already-hashed int64) and describe the
features with :class:`FeatureSpec`; :func:`write_prepared` then

1. fits a :class:`~store_rec.data.vocab.Vocab` per vocab feature on the **train** split only (so
   valid/test use the train mapping and unseen values become the OOV id 0),
2. encodes every split to int64 ids (``list<int64>`` for multi-hot features),
3. writes everything through :class:`~store_rec.data.writer.DatasetWriter` (atomic) and returns the
   :class:`~store_rec.data.schema.DatasetSchema`.

With ``history`` (a :class:`~store_rec.data.history.HistorySource`), every split table carries the
column :data:`~store_rec.data.history.HISTORY_ROW_COLUMN` (the log row whose history each output row
has); the history lists are materialised chunk by chunk while writing (bounded memory, see
:mod:`store_rec.data.history`) and appended after the other sparse columns.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from store_rec.data.history import ENTRIES_PER_CHUNK, HISTORY_ROW_COLUMN, HistorySource, history_row_group_size
from store_rec.data.schema import SPLITS, DatasetSchema, SequenceInfo, SparseFeature
from store_rec.data.vocab import Vocab, vocab_path
from store_rec.data.writer import DatasetWriter
from store_rec.errors import UserError

logger = logging.getLogger(__name__)

ROW_GROUP_SIZE = 65_536


@dataclass
class FeatureSpec:
    """One sparse output column.

    ``hash_buckets`` set: the column already holds int64 ids in ``[0, hash_buckets)`` (no vocab).
    Otherwise the column holds raw strings (``list<string>`` when ``multi_hot``) and gets a vocab
    fitted on train with ``min_count``.
    """

    name: str
    role: str
    group: Optional[str] = None
    min_count: int = 1
    multi_hot: bool = False
    hash_buckets: Optional[int] = None


def random_split_codes(n: int, seed: int, fractions: Sequence[float]) -> np.ndarray:
    """Seeded i.i.d. split: ``int8[n]`` codes 0=train, 1=valid, 2=test with ``fractions`` (train, valid)."""
    u = np.random.default_rng(seed).random(n)
    train, valid = fractions
    return np.where(u < train, 0, np.where(u < train + valid, 1, 2)).astype(np.int8)


def ordered_split_codes(keys: np.ndarray, fractions: Sequence[float]) -> np.ndarray:
    """Chronological split that keeps equal ``keys`` (e.g. an hour) in one split.

    Keys are ordered; a key goes to train when the midpoint of its rows (as a fraction of all rows in
    key order) is < ``train``, to valid when < ``train + valid``, else to test. With >= 2 distinct keys
    the last key is always test, and with >= 3 keys at least the last key before test is valid, so no
    split is empty when the data allows it.
    """
    n = len(keys)
    uniq, inv, counts = np.unique(keys, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mid = (ends - counts / 2.0) / max(n, 1)
    train, valid = fractions
    code_of_key = np.where(mid < train, 0, np.where(mid < train + valid, 1, 2)).astype(np.int8)
    if len(uniq) >= 2:
        code_of_key[-1] = 2
    if len(uniq) >= 3 and not (code_of_key == 1).any():
        last_train = np.flatnonzero(code_of_key == 0)
        if len(last_train) >= 2:
            code_of_key[last_train[-1]] = 1
    return code_of_key[inv]


def split_tables(table: pa.Table, codes: np.ndarray, order: Optional[np.ndarray] = None) -> Dict[str, pa.Table]:
    """Split ``table`` by ``codes`` (0/1/2); ``order`` (row permutation) is applied first when given."""
    if order is not None:
        table, codes = table.take(pa.array(order)), codes[order]
    return {name: table.filter(pa.array(codes == i)) for i, name in enumerate(SPLITS)}


def write_prepared(out: os.PathLike, *, overwrite: bool, dataset: str, splits: Dict[str, pa.Table],
                   label: str, dense: Sequence[str], features: Sequence[FeatureSpec],
                   user_key: Optional[str], split_method: str, source: str, params: Dict[str, object],
                   extra: Optional[Callable[[DatasetWriter, Dict[str, Vocab]], Optional[SequenceInfo]]] = None,
                   history: Optional[HistorySource] = None) -> DatasetSchema:
    """Fit vocabularies on ``splits["train"]``, encode all splits, write the dataset atomically.

    Args:
        splits: split name -> raw table with columns ``label``, ``dense``, every feature's name and
            ``user_key`` (int64) when set.
        extra: called with the writer and the fitted vocabs before commit (e.g. to write
            ``sequences.parquet``); returns the SequenceInfo to put in the schema, or None.
        history: history lists to add (the split tables then carry ``HISTORY_ROW_COLUMN``); their
            description goes to ``params["history"]`` with the mean list length per split.
    """
    train = splits.get("train")
    if train is None or train.num_rows == 0:
        raise UserError(f"{dataset}: the train split is empty ({source}); need more rows")
    vocabs: Dict[str, Vocab] = {}
    for f in features:
        if f.hash_buckets is None:
            vocabs[f.name] = Vocab.fit(train.column(f.name), min_count=f.min_count)
    fields = [pa.field(label, pa.float32())] + [pa.field(d, pa.float32()) for d in dense]
    for f in features:
        fields.append(pa.field(f.name, pa.list_(pa.int64()) if f.multi_hot else pa.int64()))
    if history is not None:
        history.encode(vocabs)
        fields += [pa.field(c, pa.list_(pa.int64())) for c in history.columns]
    if user_key and user_key not in {f.name for f in features}:
        fields.append(pa.field(user_key, pa.int64()))
    arrow_schema = pa.schema(fields)
    max_len = {f.name: 1 for f in features}
    rg = ROW_GROUP_SIZE if history is None else history_row_group_size(history.max_len, ROW_GROUP_SIZE)
    # rows encoded at a time: whole splits without history; with it a multiple of the row group size
    # holding <= ENTRIES_PER_CHUNK list entries per history column
    chunk = None if history is None else rg * max(1, ENTRIES_PER_CHUNK // (rg * history.max_len))
    hist_entries: Dict[str, int] = {}

    with DatasetWriter(out, overwrite=overwrite, row_group_size=rg) as w:
        for split in SPLITS:
            whole = splits.get(split)
            sw = w.split(split, arrow_schema, label=label)
            if whole is None or whole.num_rows == 0:
                continue
            step = chunk or whole.num_rows
            for start in range(0, whole.num_rows, step):
                t = whole.slice(start, step)
                cols = _encode_chunk(t, label, dense, features, vocabs, max_len)
                if history is not None:
                    rows = np.asarray(t.column(HISTORY_ROW_COLUMN).to_numpy(zero_copy_only=False), np.int64)
                    lists = history.lists(rows)
                    cols.update(lists)
                    hist_entries[split] = hist_entries.get(split, 0) + len(lists[history.columns[0]].values)
                if user_key and user_key not in cols:
                    cols[user_key] = pc.cast(t.column(user_key), pa.int64())
                sw.write(pa.table(cols))
        for name, v in vocabs.items():
            w.write_table(vocab_path(name), v.to_table())
        seq = extra(w, vocabs) if extra is not None else None
        sparse = [SparseFeature(name=f.name, role=f.role,
                                vocab_size=vocabs[f.name].size if f.hash_buckets is None else int(f.hash_buckets),
                                group=f.group, multi_hot=f.multi_hot, max_len=max_len[f.name],
                                vocab_file=vocab_path(f.name) if f.hash_buckets is None else None)
                  for f in features]
        if history is not None:
            sizes = {f.name: f.vocab_size for f in sparse}
            sparse += history.features(sizes)
            rows_of = {s: splits[s].num_rows for s in SPLITS if s in splits and splits[s].num_rows}
            params = {**params, "history": {**history.params(), "mean_len": {
                s: round(hist_entries.get(s, 0) / n, 3) for s, n in rows_of.items()}}}
        schema = DatasetSchema(dataset=dataset, label=label, dense=list(dense), sparse=sparse, user_key=user_key,
                               sequences=seq, split_method=split_method, source=source, params=params)
        w.commit(schema)
    return schema


def _encode_chunk(t: pa.Table, label: str, dense: Sequence[str], features: Sequence[FeatureSpec],
                  vocabs: Dict[str, Vocab], max_len: Dict[str, int]) -> Dict[str, object]:
    """Label, dense and sparse columns of raw rows ``t`` encoded to their output types (updates ``max_len``)."""
    cols: Dict[str, object] = {label: pc.cast(t.column(label), pa.float32())}
    for d in dense:
        cols[d] = pc.cast(t.column(d), pa.float32())
    for f in features:
        col = t.column(f.name)
        if f.hash_buckets is not None:
            cols[f.name] = pc.cast(col, pa.int64())
        elif f.multi_hot:
            enc = vocabs[f.name].encode_lists(col)
            cols[f.name] = enc
            if len(enc):
                max_len[f.name] = max(max_len[f.name], int(pc.max(pc.list_value_length(enc)).as_py() or 1))
        else:
            cols[f.name] = pa.array(vocabs[f.name].encode(col), pa.int64())
    return cols
