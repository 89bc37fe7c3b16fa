"""Prepared parquet dataset -> TorchRec batches (``StoreBatch``), sharded per rank, streaming.

``ParquetBatchLoader`` reads one split of a prepared dataset (``store_rec.data.schema``) and yields
``StoreBatch`` = TorchRec ``Batch`` (``dense_features Tensor[B, D] float32``, ``sparse_features``
``KeyedJaggedTensor``, ``labels Tensor[B] float32``) plus ``user_ids Tensor[B] int64`` for GAUC.

KJT layout: keys are the sparse feature names in schema order (restricted to ``features=`` if given),
then ``sid_0 .. sid_{K-1}`` when a SID table is attached (their ids, and ``sid_tuple`` with
``sid_embedding="tuple_hash"``: :mod:`store_rec.data.sid_keys`), then, for every ``history`` feature ``H``
whose ``history_of`` is the SID table's item feature, ``{H}_sid_0 .. {H}_sid_{K-1}`` (role ``history``,
``history_of = sid_k``, ``vocab_size = C + 1``): ``H``'s item ids through the same SID lookup as the
target item (an OOV / untabled item -> the OOV SID ``C``; always per-position codes, whatever
``sid_embedding``), with ``H``'s lengths. ``values`` is feature-major (all values of
key 0 for rows 0..B-1, then key 1, ...), ``lengths`` is ``Tensor[len(keys) * B] int32`` (1 for
single-valued features, the list length for multi-hot ones), ``stride = B``.

History (``history`` role, :mod:`store_rec.data.history`): jagged keys like any multi-hot feature,
oldest first. ``history_len``: ``None`` = as prepared; ``n >= 1`` keeps the ``n`` newest (last)
entries of every history list (all history keys stay aligned; the schema's ``max_len`` becomes
``min(max_len, n)``); ``0`` drops every history key (and does not read those columns), so the
history length can be swept without preparing again; ``n >= 1`` on a dataset without history
features is a ``UserError``.
A window holds ``window_rows x mean list length`` int64 entries per history key
(plus ``K`` SID keys per item history): the default window is cut to ``2**22 / max_len`` rows
when the loaded lists can be ``max_len`` long (32768 rows at ``max_len`` 128).

Sharding (what every rank computes identically, so collectives never hang):

1. The split's row groups are put in epoch order (file order, or a permutation seeded by
   ``(seed, epoch)`` when ``shuffle``); the concatenated rows are the *global stream* of ``N`` rows.
2. Rank ``r`` owns the contiguous global rows ``[r*N//W, (r+1)*N//W)`` (sizes differ by at most one),
   so ranks read disjoint rows and each row is read by exactly one rank.
3. Every rank yields the same number of batches:

   * ``drop_last=False``: ``len = ceil(ceil(N/W) / B)``. Batches are full except at the end of a rank's
     part, where a rank with one row fewer gives its last two batches sizes ``(B-1, 1)`` style
     (greedy: each batch takes ``min(B, remaining - batches_left_after_it)`` rows), so **no rank ever
     yields an empty batch** and all ranks together see every row exactly once. This needs every rank
     to own at least ``len`` rows, i.e. ``N >= W`` and (``B >= 2`` or ``N % W == 0``); otherwise the
     loader raises ``UserError`` at construction (use fewer ranks or ``drop_last=True``).
   * ``drop_last=True``: ``len = floor(floor(N/W) / B)`` full batches per rank; the rest is dropped.

Shuffling (``shuffle=True``): row-group order by ``(seed, epoch)``, then rows are permuted inside
windows of ``window_rows`` consecutive rows of the rank's part (seed ``(seed, epoch, rank, window)``).
Only one window (plus at most one cached row group) is held in memory. ``set_epoch(e)`` changes the
order. ``state_dict()`` records ``(epoch, batches yielded)``; ``load_state_dict`` resumes at exactly the
next batch by seeking to its window (no re-reading of earlier windows).

Validation at load time (``DataError``/``SchemaError``/``UserError`` naming file, row group, row and
feature): missing split, unknown feature names, schema.json columns missing from or of the wrong type in
a parquet file, nulls, ids outside ``[0, vocab_size)``, NaN/inf in dense features or the label.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from store_rec.data.feature_sids import append_feature_sids, load_feature_sids
from store_rec.data.history import check_history_len, truncation_index
from store_rec.data.schema import HISTORY, SID, DatasetSchema, SchemaError, SparseFeature
from store_rec.data.sid_keys import DEFAULT_HASH_BUCKETS, sid_key_ids, sid_key_shapes
from store_rec.data.sid_table import read_sid_table, read_sid_table_metadata, sid_codebook_size, sid_lookup  # noqa: F401  (re-exported)
from store_rec.errors import DataError, UserError
from store_rec.fileio import PathLike

logger = logging.getLogger(__name__)

DEFAULT_WINDOW_ROWS = 131_072
#: list entries per history key in one default window (int64: 32 MiB)
HISTORY_WINDOW_ENTRIES = 1 << 22


@dataclass
class StoreBatch(Batch):
    """TorchRec ``Batch`` plus ``user_ids: Tensor[B] int64`` (the dataset's user key, for GAUC)."""

    user_ids: torch.Tensor

    def to(self, device: torch.device, non_blocking: bool = False) -> "StoreBatch":
        return StoreBatch(
            dense_features=self.dense_features.to(device=device, non_blocking=non_blocking),
            sparse_features=self.sparse_features.to(device=device, non_blocking=non_blocking),
            labels=self.labels.to(device=device, non_blocking=non_blocking),
            user_ids=self.user_ids.to(device=device, non_blocking=non_blocking),
        )

    def record_stream(self, stream: torch.Stream) -> None:
        super().record_stream(stream)
        self.user_ids.record_stream(stream)

    def pin_memory(self) -> "StoreBatch":
        return StoreBatch(
            dense_features=self.dense_features.pin_memory(),
            sparse_features=self.sparse_features.pin_memory(),
            labels=self.labels.pin_memory(),
            user_ids=self.user_ids.pin_memory(),
        )

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])


# ---------------------------------------------------------------------------------------- SID tables
def schema_with_sids(schema: DatasetSchema, sid_table_path: PathLike, item_feature: Optional[str] = None,
                     sid_embedding: str = "position", sid_hash_buckets: int = DEFAULT_HASH_BUCKETS) -> DatasetSchema:
    """``schema`` with ``sid_0..sid_{K-1}`` (role ``sid``, ``vocab_size = C + 1``) appended.

    ``item_feature`` (default: the table's ``item_feature`` metadata) must be a sparse feature of
    ``schema``; the SID table must have ``item`` and ``sid_0..`` columns (see the module docstring).
    """
    table, meta, cols = read_sid_table(sid_table_path)
    item_feature = item_feature or meta.get("item_feature")
    if item_feature is not None:
        schema.feature(item_feature)  # KeyError naming the known features
    return _append_sids(schema, Path(sid_table_path), table, meta, cols, item_feature, sid_embedding, sid_hash_buckets)


def _append_sids(schema: DatasetSchema, path: Path, table: pa.Table, meta: Dict[str, Any], cols: List[str],
                 item_feature: Optional[str], sid_embedding: str = "position",
                 sid_hash_buckets: int = DEFAULT_HASH_BUCKETS) -> DatasetSchema:
    c = sid_codebook_size(path, meta, table, cols)
    out = copy.deepcopy(schema)
    names, sizes = sid_key_shapes(cols, c, sid_embedding, sid_hash_buckets)
    clash = [n for n in names if n in out.sparse_names]
    if clash:
        raise SchemaError(f"{path}: SID feature(s) {clash} already exist in the dataset schema")
    for name, size in zip(names, sizes):
        out.sparse.append(SparseFeature(name=name, role=SID, vocab_size=size))
    out.params = {**out.params, "sid_table": str(path), "sid_item_feature": item_feature,
                  "sid_codebook_size": c, "sid_embedding": sid_embedding}
    return out


def history_sid_name(history: str, sid: str) -> str:
    """KJT key of the SIDs of history list ``history``'s items: ``{history}_{sid}`` (e.g. ``hist_item_id_sid_0``)."""
    return f"{history}_{sid}"


def _append_history_sids(schema: DatasetSchema, item_feature: str, sid_names: List[str], c: int
                         ) -> Tuple[DatasetSchema, List[Tuple[str, int, str]]]:
    """``schema`` with ``{H}_sid_k`` appended for every history feature ``H`` of ``item_feature``'s ids;
    returns it and ``[(key, k, H)]``."""
    hist = [f for f in schema.sparse if f.role == HISTORY and f.history_of == item_feature]
    added: List[Tuple[str, int, str]] = []
    for f in hist:
        for k, sid in enumerate(sid_names):
            name = history_sid_name(f.name, sid)
            if name in schema.sparse_names:
                raise SchemaError(f"history SID feature {name!r} already exists in the dataset schema")
            schema.sparse.append(SparseFeature(name=name, role=HISTORY, vocab_size=c + 1, multi_hot=True,
                                               max_len=f.max_len, history_of=sid))
            added.append((name, k, f.name))
    return schema, added


# ---------------------------------------------------------------------------------------- windows
class _Window:
    """Columns of ``n`` consecutive rows of a rank's stream (already permuted when shuffling).

    ``single``: int64[Fs, n] single-valued sparse features (incl. SIDs) in KJT key order of singles;
    ``multi[name] = (lengths int64[n], offsets int64[n+1], values int64[total])``; ``dense``
    float32[n, D]; ``label`` float32[n]; ``user`` int64[n].
    """

    __slots__ = ("n", "single", "multi", "dense", "label", "user")


class ParquetBatchLoader:
    """Iterable over ``StoreBatch`` of one split of a prepared dataset (see the module docstring).

    Args:
        data_dir: prepared dataset directory (with ``schema.json``).
        split: ``train`` / ``valid`` / ``test``.
        batch_size: rows per batch ``B`` (the last batches of an epoch may be smaller, see above).
        rank, world_size: this process's part of the split.
        shuffle, seed, epoch: shuffling (row-group order + windowed row permutation).
        drop_last: yield only full batches.
        sid_table: optional SID table parquet; attaches ``sid_0..sid_{K-1}`` of ``sid_feature``.
        sid_feature: the item feature the SIDs belong to (default: the table's ``item_feature``
            metadata, else the dataset's sequences item feature, else the only ``id`` feature).
        sid_tables: ``{feature: SID table}`` (``data.sid_tables``): each feature's SIDs attached as
            ``{feature}_sid_0..`` after the ``sid_*`` keys (:mod:`store_rec.data.feature_sids`).
        sid_embedding, sid_hash_buckets: the SID keys (``position`` | ``prefix_ngram`` |
            ``tuple_hash``; :mod:`store_rec.data.sid_keys`).
        features: sparse features to put in the KJT (default: all, in schema order).
        window_rows: rows per read/shuffle window (default ``DEFAULT_WINDOW_ROWS``, or with history
            lists of ``max_len`` N (after ``history_len``) ``max(batch_size, min(DEFAULT_WINDOW_ROWS,
            HISTORY_WINDOW_ENTRIES // N))`` so a window holds <= 2**22 entries per history key;
            memory bound: about ``window_rows * 8 bytes *
            columns``).
        prefetch: batches prepared ahead by a background thread (0 = none).
        history_len: ``None`` (history lists as prepared), ``n >= 1`` (keep the ``n`` newest entries of
            every history list) or ``0`` (no history keys); see the module docstring.
    """

    def __init__(self, data_dir: PathLike, split: str, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                 sid_table: Optional[PathLike] = None, sid_feature: Optional[str] = None,
                 features: Optional[Sequence[str]] = None, epoch: int = 0,
                 sid_tables: Optional[Mapping[str, PathLike]] = None,
                 window_rows: Optional[int] = None, prefetch: int = 0, history_len: Optional[int] = None,
                 sid_embedding: str = "position", sid_hash_buckets: int = DEFAULT_HASH_BUCKETS):
        self.data_dir = Path(data_dir)
        full = DatasetSchema.load(self.data_dir)
        base = full
        if split not in base.splits:
            raise UserError(f"{self.data_dir}: split {split!r} not in this dataset (it has: "
                            f"{', '.join(base.splits) or 'none'})")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size={batch_size!r}: must be a positive integer")
        if not (0 <= rank < world_size):
            raise UserError(f"rank={rank} world_size={world_size}: need 0 <= rank < world_size")
        if seed < 0 or epoch < 0:
            raise UserError(f"seed={seed} epoch={epoch}: must be non-negative")
        self.split, self.batch_size = split, batch_size
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.prefetch = int(prefetch)
        self.epoch = int(epoch)
        self._pos = 0  # batches yielded in the current epoch

        # ---- features ---------------------------------------------------------------------------
        if features is not None:
            unknown = [f for f in features if f not in base.sparse_names]
            if unknown:
                raise UserError(f"features: unknown sparse feature(s) {unknown}; {self.data_dir}/schema.json has: "
                                f"{', '.join(base.sparse_names)}")
            keep = set(features)
            base = copy.deepcopy(base)
            base.sparse = [f for f in base.sparse if f.name in keep]
        self.history_len = check_history_len(history_len, "history_len", allow_none=True)
        if self.history_len and not any(f.role == HISTORY for f in full.sparse):
            raise UserError(f"history_len={self.history_len}: {self.data_dir} has no history features (prepare it "
                            "with history_len N > 0, e.g. `store-rec data prepare ... --set history_len=128`, or "
                            "set history_len to null / 0)")
        if self.history_len is not None and any(f.role == HISTORY for f in base.sparse):
            base = copy.deepcopy(base)
            if self.history_len == 0:
                base.sparse = [f for f in base.sparse if f.role != HISTORY]
            else:
                for f in base.sparse:
                    if f.role == HISTORY:
                        f.max_len = min(f.max_len, self.history_len)
        self._data_features: List[SparseFeature] = list(base.sparse)
        self._history = [f.name for f in base.sparse if f.role == HISTORY]
        if window_rows is None:
            hmax = max((f.max_len for f in base.sparse if f.role == HISTORY), default=0)
            window_rows = DEFAULT_WINDOW_ROWS if not hmax else max(
                batch_size, min(DEFAULT_WINDOW_ROWS, HISTORY_WINDOW_ENTRIES // hmax))
        self.window_rows = max(int(window_rows), 1)
        self._history_sids: List[Tuple[str, int, str]] = []  # (key, k, history column)
        self._sid_lut: Optional[np.ndarray] = None
        self._hist_sid_lut: Optional[np.ndarray] = None
        schema = base
        if sid_table is not None:
            table, meta, cols = read_sid_table(sid_table)
            item = sid_feature or meta.get("item_feature") or (base.sequences.item_feature if base.sequences else None)
            if item is None:
                ids = [f.name for f in full.features_with_role("id")]
                item = ids[0] if len(ids) == 1 else None
            if item is None:
                raise UserError(f"{sid_table}: cannot tell which feature the SIDs belong to; pass sid_feature")
            if item not in full.sparse_names:
                raise UserError(f"sid_feature {item!r} is not a sparse feature of {self.data_dir}/schema.json "
                                f"(has: {', '.join(full.sparse_names)})")
            schema = _append_sids(base, Path(sid_table), table, meta, cols, item, sid_embedding, sid_hash_buckets)
            self._sid_item = item
            codes = self._build_sid_lut(Path(sid_table), table, cols, schema.params["sid_codebook_size"],
                                        full.feature(item).vocab_size)  # [K, vocab]: per-position codes
            self._sid_lut = sid_key_ids(codes, schema.params["sid_codebook_size"], sid_embedding, sid_hash_buckets)
            self._hist_sid_lut = codes  # history items' {H}_sid_k keys: always per-position codes
            schema, self._history_sids = _append_history_sids(schema, item, cols, schema.params["sid_codebook_size"])
        self._feature_sids = load_feature_sids(full, sid_tables, primary_feature=getattr(self, "_sid_item", None)) \
            if sid_tables else []
        if self._feature_sids:
            schema = append_feature_sids(schema, self._feature_sids)
        self._schema = schema
        self._keys = schema.sparse_names
        self._single = [f.name for f in self._data_features if not f.multi_hot]
        self._multi = [f.name for f in self._data_features if f.multi_hot]
        hist_sid_keys = {key for key, _, _ in self._history_sids}
        self._sid_names = [f.name for f in schema.sparse[len(self._data_features):]
                           if f.name not in hist_sid_keys]  # appended SIDs
        self._single_all = self._single + self._sid_names  # rows of _Window.single
        self._fast = not self._multi
        self._vocab = np.array([f.vocab_size for f in self._data_features if not f.multi_hot], np.int64)
        self._user_key = base.user_key if base.user_key else None
        self._label, self._dense = full.label, list(full.dense)
        read = [self._label, *self._dense, *self._single, *self._multi]
        if self._sid_lut is not None and self._sid_item not in read:
            read.append(self._sid_item)
        if self._user_key and self._user_key not in read:
            read.append(self._user_key)
        read += [fs.feature for fs in self._feature_sids if fs.feature not in read]
        self._read_cols = read

        # ---- files & row groups ------------------------------------------------------------------
        self._files: List[Path] = []
        self._rgs: List[Tuple[int, int, int]] = []  # (file index, row group, rows)
        self._pf: Dict[int, pq.ParquetFile] = {}
        for rel in base.splits[split].files:
            path = self.data_dir / rel
            if not path.exists():
                raise DataError(f"{path}: listed in {self.data_dir}/schema.json for split {split!r} but missing")
            try:
                pf = pq.ParquetFile(path)
            except (pa.ArrowInvalid, OSError) as e:
                raise DataError(f"{path}: not a readable parquet file: {e}") from e
            self._check_columns(path, pf.schema_arrow, full)
            fi = len(self._files)
            self._files.append(path)
            for g in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                if n:
                    self._rgs.append((fi, g, n))
        self.num_rows = sum(n for _, _, n in self._rgs)
        expected = base.splits[split].rows
        if expected != self.num_rows:
            raise SchemaError(f"{self.data_dir}/schema.json: split {split!r} says {expected} rows but its parquet "
                              f"files hold {self.num_rows}")
        N, W, B = self.num_rows, world_size, batch_size
        self._lo, self._hi = rank * N // W, (rank + 1) * N // W
        if drop_last:
            self._num_batches = (N // W) // B
        else:
            self._num_batches = -(-(-(-N // W)) // B)  # ceil(ceil(N / W) / B)
            if N and (N < W or (N // W) < self._num_batches):
                raise UserError(
                    f"{self.data_dir}: split {split!r} has {N} rows: too few for {W} ranks with batch_size {B} "
                    f"without empty batches (need rows >= world_size, and batch_size >= 2 unless rows % world_size "
                    f"== 0); use fewer ranks or drop_last=True")
        n_r = self._hi - self._lo
        sizes = np.empty(self._num_batches, np.int64)
        if drop_last:
            sizes[:] = B
        else:
            # n_r >= (len - 1) * B, so all but the last two batches are full; the greedy tail
            # min(B, remaining - batches_after) keeps every batch non-empty.
            nb = self._num_batches
            head = max(nb - 2, 0)
            sizes[:head] = B
            remaining = n_r - head * B
            for j in range(head, nb):
                sizes[j] = min(B, remaining - (nb - j - 1))
                remaining -= sizes[j]
            if remaining != 0 or (nb and sizes.min() < 1):
                raise AssertionError(f"batch plan bug: n_r={n_r} B={B} len={nb} sizes tail={sizes[head:]}")
        self._offsets = np.zeros(self._num_batches + 1, np.int64)
        np.cumsum(sizes, out=self._offsets[1:])
        self._ones_cache: Dict[int, torch.Tensor] = {}

    # ------------------------------------------------------------------ public API
    @property
    def schema(self) -> DatasetSchema:
        """DatasetSchema of what this loader yields (selected features, SID features appended)."""
        return self._schema

    @property
    def keys(self) -> List[str]:
        return list(self._keys)

    def __len__(self) -> int:
        return self._num_batches

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (changes the shuffle order); resets the position to its first batch."""
        self.epoch = int(epoch)
        self._pos = 0

    def state_dict(self) -> Dict[str, Any]:
        return {"epoch": self.epoch, "batches": self._pos, "seed": self.seed, "shuffle": self.shuffle,
                "rank": self.rank, "world_size": self.world_size, "batch_size": self.batch_size,
                "drop_last": self.drop_last, "split": self.split, "num_rows": self.num_rows,
                "window_rows": self.window_rows}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for k in ("seed", "shuffle", "world_size", "batch_size", "drop_last", "split", "num_rows", "window_rows"):
            if k in state and state[k] != getattr(self, k):
                raise UserError(f"loader state: {k}={state[k]!r} does not match this loader's {getattr(self, k)!r}")
        if not 0 <= int(state["batches"]) <= self._num_batches:
            raise UserError(f"loader state: batches={state['batches']} outside [0, {self._num_batches}]")
        self.epoch = int(state["epoch"])
        self._pos = int(state["batches"])

    def __iter__(self) -> Iterator[StoreBatch]:
        """Yield the remaining batches of the current epoch.

        Iteration continues from the position (batches already yielded in this epoch), so an iterator
        abandoned after ``k`` batches -- or a ``load_state_dict`` -- makes the next ``iter()`` start at
        batch ``k``; a finished epoch starts over from its first batch (call ``set_epoch`` to reshuffle).
        """
        start = self._pos
        if start >= self._num_batches:
            start = self._pos = 0  # previous epoch finished: iterate it again from the start
        gen = self._generate(start)
        if self.prefetch > 0:
            gen = _prefetched(gen, self.prefetch)
        for batch in gen:
            self._pos += 1
            yield batch
        self._pos = 0

    # ------------------------------------------------------------------ validation helpers
    def _check_columns(self, path: Path, arrow: pa.Schema, schema: DatasetSchema) -> None:
        names = set(arrow.names)

        def typ(col: str) -> pa.DataType:
            if col not in names:
                raise SchemaError(f"{path}: column {col!r} from schema.json is missing (columns: {arrow.names})")
            return arrow.field(col).type

        for col in [schema.label, *schema.dense]:
            t = typ(col)
            if not (pa.types.is_floating(t) or pa.types.is_integer(t)):
                raise SchemaError(f"{path}: column {col!r} has type {t}; schema.json needs a float column")
        for f in schema.sparse:
            if f.name not in self._read_cols_names(schema):
                continue
            t = typ(f.name)
            if f.multi_hot:
                ok = (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_integer(t.value_type)
                want = "list<int64> (multi_hot)"
            else:
                ok = pa.types.is_integer(t)
                want = "int64"
            if not ok:
                raise SchemaError(f"{path}: column {f.name!r} has type {t}; schema.json says {want}")
        if self._user_key:
            t = typ(self._user_key)
            if not pa.types.is_integer(t):
                raise SchemaError(f"{path}: user_key column {self._user_key!r} has type {t}; expected int64")

    def _read_cols_names(self, schema: DatasetSchema) -> set:
        names = {f.name for f in self._data_features} | {fs.feature for fs in self._feature_sids}
        if self._sid_lut is not None:
            names.add(self._sid_item)
        return names

    def _build_sid_lut(self, path: Path, table: pa.Table, cols: List[str], c: int, vocab: int) -> np.ndarray:
        lut, missing = sid_lookup(path, table, cols, c, vocab, self._sid_item)  # OOV SID = C for missing items
        self.sid_oov_items = int(len(missing))
        if len(missing):
            logger.warning("%s: %d of %d %r ids have no row in the SID table; they get the OOV SID %d in every sid_k "
                           "(e.g. ids %s)", path, len(missing), vocab - 1, self._sid_item, c, missing[:5].tolist())
        return lut

    # ------------------------------------------------------------------ reading
    def _epoch_order(self) -> List[Tuple[int, int, int]]:
        if not self.shuffle:
            return self._rgs
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(self._rgs))
        return [self._rgs[i] for i in perm]

    def _read_rg(self, fi: int, g: int) -> pa.Table:
        pf = self._pf.get(fi)
        if pf is None:
            pf = self._pf[fi] = pq.ParquetFile(self._files[fi])
        try:
            return pf.read_row_group(g, columns=self._read_cols)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{self._files[fi]}: row group {g}: cannot be read: {e}") from e

    def _load_window(self, order, starts: np.ndarray, w: int, cache: Dict) -> _Window:
        """Rows ``[w*S, min((w+1)*S, n_r))`` of this rank's part, permuted if shuffling."""
        S = self.window_rows
        a = self._lo + w * S
        b = min(self._lo + (w + 1) * S, self._hi)
        n = b - a
        win = _Window()
        win.n = n
        Fs, D = len(self._single_all), len(self._dense)
        single = np.empty((Fs, n), np.int64)
        dense = np.empty((n, D), np.float32)
        label = np.empty(n, np.float32)
        user = np.zeros(n, np.int64)
        item = np.empty(n, np.int64) if self._sid_lut is not None and self._sid_item not in self._single else None
        multi_parts: Dict[str, List[Tuple[np.ndarray, np.ndarray]]] = {m: [] for m in self._multi}
        cache_items = {fs.feature: np.empty(n, np.int64) for fs in self._feature_sids if fs.feature not in self._single}
        segs = []  # (window pos, rows, file index, row group, row in rg)
        i = int(np.searchsorted(starts, a, side="right") - 1)
        pos = 0
        while pos < n:
            fi, g, rows = order[i]
            r0 = a + pos - int(starts[i])
            take = min(rows - r0, n - pos)
            key = (fi, g)
            if key not in cache:
                cache.clear()
                cache[key] = self._read_rg(fi, g)
            t = cache[key].slice(r0, take)
            segs.append((pos, take, fi, g, r0))
            sl = slice(pos, pos + take)
            for col in [self._label, *self._dense, *self._single, *self._multi] + (
                    [self._user_key] if self._user_key else []) + ([self._sid_item] if item is not None else []):
                if t.column(col).null_count:
                    rows_null = np.flatnonzero(t.column(col).is_null().to_numpy(zero_copy_only=False))
                    raise DataError(f"{self._files[fi]}: row group {g}, row {r0 + rows_null[0]}: null in column {col!r}")
            label[sl] = t.column(self._label).to_numpy()
            for j, d in enumerate(self._dense):
                dense[sl, j] = t.column(d).to_numpy()
            for j, f in enumerate(self._single):
                single[j, sl] = t.column(f).to_numpy()
            if self._user_key:
                user[sl] = t.column(self._user_key).to_numpy()
            if item is not None:
                item[sl] = t.column(self._sid_item).to_numpy()
            for col, arr in cache_items.items():
                if t.column(col).null_count:
                    raise DataError(f"{self._files[fi]}: row group {g}: null in column {col!r}")
                arr[sl] = t.column(col).to_numpy()
            for m in self._multi:
                col = t.column(m).combine_chunks() if t.column(m).num_chunks != 1 else t.column(m).chunk(0)
                lens = pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
                vals = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
                multi_parts[m].append((lens, vals))
            pos += take
            i += 1
        # ---- validation (vectorised over the window) -----------------------------------------------
        self._validate(win_label=label, dense=dense, single=single, multi_parts=multi_parts, segs=segs)
        if self._sid_lut is not None:
            src = single[self._single.index(self._sid_item)] if item is None else item
            if item is not None and n:
                v = self._sid_lut.shape[1]
                badi = np.flatnonzero((item < 0) | (item >= v))
                if len(badi):
                    raise DataError(f"{self._where(segs, int(badi[0]))}: feature {self._sid_item!r}: id out of "
                                    f"range: {item[badi[0]]} not in [0, {v}) (vocab_size in schema.json)")
            single[len(self._single):len(self._single) + len(self._sid_lut)] = self._sid_lut[:, src]
        if self._feature_sids:  # data.sid_tables: each feature's SIDs after the sid_* rows
            self._fill_feature_sids(single, cache_items, segs)
        multi: Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        cut: Optional[Tuple[np.ndarray, np.ndarray, Optional[np.ndarray], np.ndarray]] = None  # shared by the aligned lists
        for m, parts in multi_parts.items():
            lens = np.concatenate([p[0] for p in parts]) if len(parts) != 1 else parts[0][0]
            vals = np.concatenate([p[1] for p in parts]) if len(parts) != 1 else parts[0][1]
            offs = np.zeros(n + 1, np.int64)
            np.cumsum(lens, out=offs[1:])
            if self.history_len and m in self._history:
                if cut is None or not np.array_equal(cut[3], lens):
                    cut = (*truncation_index(lens, self.history_len), lens)
                lens, offs = cut[0], cut[1]
                vals = vals if cut[2] is None else vals[cut[2]]
            multi[m] = (lens, offs, vals)
        if self._history_sids:
            lut = self._hist_sid_lut
            assert lut is not None
            for hkey, k, h in self._history_sids:
                lens, offs, vals = multi[h]
                multi[hkey] = (lens, offs, lut[k, vals])
        if self.shuffle and n > 1:
            perm = np.random.default_rng([self.seed, self.epoch, self.rank, w]).permutation(n)
            single = single[:, perm]
            dense, label, user = dense[perm], label[perm], user[perm]
            last: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = None  # aligned lists share it
            for m, (lens, offs, vals) in multi.items():
                if last is None or not (last[0] is lens or np.array_equal(last[0], lens)):
                    nl = lens[perm]
                    no = np.zeros(n + 1, np.int64)
                    np.cumsum(nl, out=no[1:])
                    idx = np.repeat(offs[:-1][perm] - no[:-1], nl) + np.arange(no[-1])
                    last = (lens, nl, no, idx)
                multi[m] = (last[1], last[2], vals[last[3]])
        win.single, win.multi, win.dense, win.label, win.user = single, multi, dense, label, user
        return win

    def _fill_feature_sids(self, single: np.ndarray, extra: Dict[str, np.ndarray], segs) -> None:
        """Rows of ``single`` after the ``sid_*`` ones: each ``data.sid_tables`` feature's ``K`` SIDs."""
        row = len(self._single) + (len(self._sid_lut) if self._sid_lut is not None else 0)
        for fs in self._feature_sids:
            ids = single[self._single.index(fs.feature)] if fs.feature not in extra else extra[fs.feature]
            v = fs.lut.shape[1]
            bad = np.flatnonzero((ids < 0) | (ids >= v))
            if len(bad):
                raise DataError(f"{self._where(segs, int(bad[0]))}: feature {fs.feature!r}: id out of range: "
                                f"{ids[bad[0]]} not in [0, {v}) (vocab_size in schema.json)")
            single[row:row + len(fs.keys)] = fs.codes(ids)
            row += len(fs.keys)

    def _where(self, segs, q: int) -> str:
        for pos, take, fi, g, r0 in segs:
            if pos <= q < pos + take:
                return f"{self._files[fi]}: row group {g}, row {r0 + q - pos}"
        return f"{self._files[segs[0][2]]}"

    def _validate(self, win_label, dense, single, multi_parts, segs) -> None:
        if not np.isfinite(win_label).all():
            q = int(np.flatnonzero(~np.isfinite(win_label))[0])
            raise DataError(f"{self._where(segs, q)}: label {self._label!r} is {win_label[q]} (NaN/inf)")
        if dense.size and not np.isfinite(dense).all():
            q, j = (int(x[0]) for x in np.nonzero(~np.isfinite(dense)))
            raise DataError(f"{self._where(segs, q)}: dense feature {self._dense[j]!r} is {dense[q, j]} (NaN/inf)")
        F = len(self._single)
        if F and single.shape[1]:
            lo = single[:F].min(axis=1)
            hi = single[:F].max(axis=1)
            bad = np.flatnonzero((lo < 0) | (hi >= self._vocab))
            if len(bad):
                j = int(bad[0])
                row = single[j]
                q = int(np.flatnonzero((row < 0) | (row >= self._vocab[j]))[0])
                raise DataError(f"{self._where(segs, q)}: feature {self._single[j]!r}: id out of range: {row[q]} "
                                f"not in [0, {self._vocab[j]}) (vocab_size in schema.json)")
        for m, parts in multi_parts.items():
            v = self._schema.feature(m).vocab_size
            pos = 0
            for (lens, vals), seg in zip(parts, segs):
                badv = np.flatnonzero((vals < 0) | (vals >= v))
                if len(badv):
                    q = int(np.searchsorted(np.cumsum(lens), badv[0], side="right"))
                    raise DataError(f"{self._where(segs, seg[0] + q)}: feature {m!r}: id out of range: "
                                    f"{vals[badv[0]]} not in [0, {v}) (vocab_size in schema.json)")
                pos += len(lens)

    # ------------------------------------------------------------------ batches
    def _generate(self, start: int) -> Iterator[StoreBatch]:
        if start >= self._num_batches:
            return
        order = self._epoch_order()
        starts = np.zeros(len(order) + 1, np.int64)
        np.cumsum([r for _, _, r in order], out=starts[1:])
        S = self.window_rows
        cache: Dict = {}
        p = int(self._offsets[start])  # stream position (rows of this rank's part)
        w = p // S
        win = self._load_window(order, starts, w, cache)
        for j in range(start, self._num_batches):
            size = int(self._offsets[j + 1] - self._offsets[j])
            parts = []
            while size > 0:
                a = p - w * S
                if a >= win.n:
                    w += 1
                    win = self._load_window(order, starts, w, cache)
                    a = 0
                take = min(size, win.n - a)
                parts.append((win, a, a + take))
                p += take
                size -= take
            yield self._make_batch(parts)

    def _ones(self, n: int) -> torch.Tensor:
        t = self._ones_cache.get(n)
        if t is None:
            t = self._ones_cache[n] = torch.ones(n, dtype=torch.int32)
        return t

    def _make_batch(self, parts: List[Tuple[_Window, int, int]]) -> StoreBatch:
        B = sum(b - a for _, a, b in parts)
        if len(parts) == 1:
            win, a, b = parts[0]
            single = win.single[:, a:b]
            dense, label, user = win.dense[a:b], win.label[a:b], win.user[a:b]
        else:
            single = np.concatenate([w.single[:, a:b] for w, a, b in parts], axis=1)
            dense = np.concatenate([w.dense[a:b] for w, a, b in parts])
            label = np.concatenate([w.label[a:b] for w, a, b in parts])
            user = np.concatenate([w.user[a:b] for w, a, b in parts])
        K = len(self._keys)
        if self._fast:
            values = torch.from_numpy(np.ascontiguousarray(single).reshape(-1))
            lengths = self._ones(K * B)
            length_per_key = [B] * K
        else:
            vals, lens, lpk = [], [], []
            si = {name: i for i, name in enumerate(self._single_all)}
            for key in self._keys:
                if key in si:
                    vals.append(single[si[key]])
                    lens.append(np.ones(B, np.int32))
                    lpk.append(B)
                else:
                    mv = [w.multi[key][2][w.multi[key][1][a]:w.multi[key][1][b]] for w, a, b in parts]
                    ml = [w.multi[key][0][a:b] for w, a, b in parts]
                    v = mv[0] if len(mv) == 1 else np.concatenate(mv)
                    vals.append(v)
                    lens.append((ml[0] if len(ml) == 1 else np.concatenate(ml)).astype(np.int32))
                    lpk.append(int(len(v)))
            values = torch.from_numpy(np.concatenate(vals).astype(np.int64, copy=False))
            lengths = torch.from_numpy(np.concatenate(lens))
            length_per_key = lpk
        kjt = KeyedJaggedTensor(keys=self._keys, values=values, lengths=lengths, stride=B,
                                length_per_key=length_per_key)
        return StoreBatch(
            dense_features=torch.from_numpy(np.ascontiguousarray(dense)),
            sparse_features=kjt,
            labels=torch.from_numpy(np.ascontiguousarray(label)),
            user_ids=torch.from_numpy(np.ascontiguousarray(user)),
        )


def _prefetched(gen: Iterator[StoreBatch], depth: int) -> Iterator[StoreBatch]:
    """Run ``gen`` in a daemon thread, ``depth`` batches ahead; re-raises its exceptions here."""
    q: "queue.Queue" = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # noqa: BLE001 - forwarded to the consumer
            q.put(e)

    t = threading.Thread(target=work, name="store_rec-loader-prefetch", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
