"""Vocabularies: raw categorical values -> contiguous int64 ids, fitted on the train split.

Conventions (see :mod:`store_rec.data.schema`): id ``0`` is the OOV id (values under the min-count
threshold, values unseen at fit time, missing values); known values get ids ``1 .. size - 1`` in a
deterministic order: **descending count, then ascending value** (so frequent values get small ids
and two runs on the same data give the same mapping). ``size`` counts the OOV id.

Everything is vectorised with ``pyarrow.compute`` (``value_counts`` to fit, ``index_in`` to
encode), so fitting and encoding tens of millions of rows costs seconds, not a Python loop per row::

    vocab = Vocab.fit(train_table["site_id"], min_count=2)   # Array | ChunkedArray of strings
    ids = vocab.encode(test_table["site_id"])                 # np.ndarray[int64], unseen -> 0
    writer.write_table(vocab_path("site_id"), vocab.to_table())
    same = load_vocab(dataset_dir, "site_id")                  # the saved mapping, for later runs
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from store_rec.data.schema import OOV_ID
from store_rec.errors import DataError

ArrayLike = Union[pa.Array, pa.ChunkedArray]


def vocab_path(feature: str) -> str:
    """Path of a feature's vocabulary file relative to the dataset directory."""
    return f"vocab/{feature}.parquet"


def _is_dict(values: ArrayLike) -> bool:
    return pa.types.is_dictionary(values.type)


def _combine(values: ArrayLike) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _as_string(values: ArrayLike) -> pa.ChunkedArray:
    if isinstance(values, pa.Array):
        values = pa.chunked_array([values])
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        values = pc.list_flatten(values)
    if not pa.types.is_string(values.type):
        values = pc.cast(values, pa.string())
    return values


@dataclass
class Vocab:
    """A fitted vocabulary. ``values[i]`` is the raw value of id ``i + 1`` (id 0 is OOV).

    Attributes:
        values: ``pa.Array[string]`` of the known values, in id order (without the OOV slot).
        min_count: the threshold it was fitted with (values seen fewer times are OOV).
        counts: ``np.ndarray[int64]`` count of each known value in the fit data (same order).
    """

    values: pa.Array
    min_count: int = 1
    counts: np.ndarray = None  # type: ignore[assignment]

    @property
    def size(self) -> int:
        """Embedding rows needed: known values + the OOV id."""
        return len(self.values) + 1

    @classmethod
    def fit(cls, values: ArrayLike, min_count: int = 1) -> "Vocab":
        """Fit on ``values`` (strings or anything castable; list arrays are flattened; nulls ignored).

        Ids are assigned by descending count, ties by ascending value. Dictionary arrays are counted
        through their indices and the counts summed per distinct value, so a dictionary that repeats
        a value (Arrow allows it) still gives that value exactly one id.
        """
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        if _is_dict(values):
            return cls._fit_dictionary(_combine(values), min_count)
        vals = _as_string(values)
        if len(vals) == 0 or vals.null_count == len(vals):
            return cls(pa.array([], pa.string()), min_count, np.zeros(0, np.int64))
        vc = pc.value_counts(vals)
        return cls._from_counts(vc.field("values"), vc.field("counts").to_numpy(zero_copy_only=False), min_count)

    @classmethod
    def _fit_dictionary(cls, arr: pa.DictionaryArray, min_count: int) -> "Vocab":
        """Fit on a dictionary array: count the indices per dictionary slot, then sum the slot
        counts **per value**.

        Arrow does not require a dictionary to hold distinct values (e.g. one entry per user row of a
        lookup table, or dictionaries concatenated across files), so a value may own several slots;
        counting per slot would give it several ids. The used slots are sorted by value (the sort
        ``_from_counts`` needs anyway), so equal values are adjacent and merge with one
        ``reduceat``: ``O(rows + D log D)`` for ``D`` used slots, about the cost of counting alone.
        """
        idx = arr.indices.to_numpy(zero_copy_only=False)
        valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        cnt = np.bincount(idx[valid].astype(np.int64), minlength=len(arr.dictionary))
        slots = np.flatnonzero(cnt)
        values = pc.cast(arr.dictionary.take(pa.array(slots, pa.int64())), pa.string())
        if values.null_count:  # a null dictionary value is a missing value
            ok = ~np.asarray(values.is_null().to_numpy(zero_copy_only=False), dtype=bool)
            slots, values = slots[ok], values.filter(pa.array(ok))
        by_value = pc.sort_indices(values).to_numpy()
        values, counts = values.take(pa.array(by_value)), cnt[slots][by_value]
        if len(values) > 1:
            same = pc.fill_null(pc.equal(values.slice(1), values.slice(0, len(values) - 1)), False)
            starts = np.flatnonzero(np.r_[True, ~np.asarray(same.to_numpy(zero_copy_only=False), dtype=bool)])
            if len(starts) < len(values):
                values, counts = values.take(pa.array(starts)), np.add.reduceat(counts, starts)
        return cls._from_counts(values, counts, min_count, sorted_by_value=True)

    @classmethod
    def _from_counts(cls, uniq: pa.Array, counts: np.ndarray, min_count: int,
                     sorted_by_value: bool = False) -> "Vocab":
        """``uniq``: distinct values (``sorted_by_value``: already in ascending order), ``counts`` theirs."""
        counts = np.asarray(counts, np.int64)
        keep = (counts >= min_count)
        if uniq.null_count:
            keep &= ~np.asarray(uniq.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        idx = np.flatnonzero(keep)
        uniq = uniq.take(pa.array(idx))
        counts = counts[idx]
        # ascending value rank, then a stable sort by descending count
        by_value = np.arange(len(uniq)) if sorted_by_value else pc.sort_indices(uniq).to_numpy()
        order = by_value[np.argsort(-counts[by_value], kind="stable")]
        return cls(uniq.take(pa.array(order)), min_count, counts[order])

    def encode(self, values: ArrayLike) -> np.ndarray:
        """Map raw values to ids: ``np.ndarray[int64]`` of the same length; unknown / null -> 0.

        Dictionary arrays are encoded through their dictionary (one lookup per distinct value)."""
        if _is_dict(values):
            arr = _combine(values)
            codes = np.r_[self.encode(arr.dictionary), OOV_ID].astype(np.int64)
            idx = arr.indices.to_numpy(zero_copy_only=False)
            null = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
            return codes[np.where(null, len(codes) - 1, np.nan_to_num(idx, nan=0).astype(np.int64))]
        vals = _as_string(values)
        idx = pc.index_in(vals, value_set=self.values)
        out = pc.fill_null(pc.add(pc.cast(idx, pa.int64()), 1), OOV_ID)
        return out.to_numpy() if isinstance(out, pa.Array) else np.asarray(out.combine_chunks().to_numpy())

    def encode_lists(self, values: ArrayLike) -> pa.Array:
        """Multi-hot: ``list<string>`` -> ``list<int64>`` with the same offsets (unknown -> 0)."""
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if not (pa.types.is_list(values.type) or pa.types.is_large_list(values.type)):
            raise TypeError(f"encode_lists needs a list array, got {values.type}")
        flat = self.encode(values.flatten())
        offsets = pc.subtract(values.offsets, values.offsets[0])
        return pa.ListArray.from_arrays(pc.cast(offsets, pa.int32()), pa.array(flat, pa.int64()))

    def decode(self, ids: np.ndarray) -> list:
        """Ids -> raw values (``None`` for the OOV id), for inspection and tests."""
        ids = np.asarray(ids, np.int64)
        vals = self.values.to_pylist()
        return [None if i == OOV_ID else vals[i - 1] for i in ids]

    def to_table(self) -> pa.Table:
        """The on-disk layout (same as ``DatasetWriter.write_vocab``): columns ``value`` (string),
        ``id`` (int64) with row ``i`` = id ``i``; row 0 is the OOV slot (value ``""``)."""
        values = pa.concat_arrays([pa.array([""], pa.string()), self.values.cast(pa.string())])
        return pa.table({"value": values, "id": pa.array(np.arange(len(values), dtype=np.int64))})


def load_vocab(dataset_dir: os.PathLike, feature: str) -> Vocab:
    """Load ``dataset_dir/vocab/<feature>.parquet`` written at prepare time; errors name the file."""
    path = Path(dataset_dir) / vocab_path(feature)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no vocabulary for feature {feature!r}")
    t = pq.read_table(path)
    if t.column_names[:2] != ["value", "id"]:
        raise DataError(f"{path}: expected columns ['value', 'id'], got {t.column_names}")
    ids = t.column("id").to_numpy()
    if len(ids) == 0 or not np.array_equal(ids, np.arange(len(ids))):
        raise DataError(f"{path}: ids must be 0 .. {len(ids) - 1} in order (row 0 = OOV)")
    return Vocab(t.column("value").combine_chunks().slice(1))
