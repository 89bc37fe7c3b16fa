"""``store-rec data prepare table``: your own CSV / TSV / parquet files + a YAML schema -> a prepared dataset.

The schema gives every column of the files a role (validated like the training config: an unknown
key, a column of the files without a role or a schema column missing from the files is an error
naming it, exit code 2)::

    kind: table                      # or `interactions` (a user-item log; see store_rec.data.interactions)
    name: shop                       # dataset name written to schema.json
    format: auto                     # csv | tsv | parquet | auto (by file suffix)
    header: true                     # CSV/TSV files start with a header line (false: `columns` order)
    min_count: 2                     # default vocabulary threshold (rarer values -> OOV id 0)
    columns:
      click:     {role: label}                           # 0/1
      price:     {role: dense, transform: log1p}         # log1p(max(x, 0)); missing -> fill (0)
      user_id:   {role: id, user_key: true}              # an id feature that is also the GAUC user key
      item_id:   {role: id, item_key: true}              # the item (popularity check, sequences)
      site:      {role: id, hash_buckets: 1000000}       # hashed: one pass, no vocabulary
      category:  {role: static, group: item}             # low-cardinality, semantic group `item`
      tags:      {role: static, group: item, multi_hot: "|"}
      ts:        {role: timestamp}                       # integer/float, ISO 8601, or time_format
      row_id:    {role: drop}
    split: {method: random, train_frac: 0.8, valid_frac: 0.1}   # or time (valid_from/test_from), given

Streaming, bounded memory: files are read in blocks (:mod:`store_rec.data.streaming`); a first pass
counts the values of vocabulary features on the train rows (skipped when every feature is hashed),
the second encodes and writes parquet row groups as it goes. ``workers`` processes share the files
(one file per task). What is held in memory: one block per worker, the vocabularies' distinct values
and, when the dataset has a user key, an item key and a label, the (user, item, time) of train
positives for ``sequences.parquet``.

Given splits (``splits={"train": PATH, ...}`` / ``--splits``, or files named train* / valid* / test*
in a source directory) are kept row for row; ``split.method: random`` re-splits them only when set
explicitly with ``resplit=True``.
"""

from __future__ import annotations

import logging
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Literal, Optional, Tuple, Union

import multiprocessing
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from store_rec.config import ConfigError, check, to_dict
from store_rec.data.csvio import NUMERIC_RE
from store_rec.data.dsconfig import load_dataset_config
from store_rec.data.schema import SPLITS, DatasetSchema, SequenceInfo, SparseFeature, SplitInfo
from store_rec.data.splits import (detect_given_splits, random_codes, resolve_given_splits, time_cutoff_codes)
from store_rec.data.streaming import BLOCK_SIZE, file_format, iter_chunks, resolve_sources, row_uniform, splitmix64
from store_rec.data.vocab import Vocab, load_vocab, vocab_path
from store_rec.errors import DataError, UserError

logger = logging.getLogger(__name__)

ROLES = ("label", "dense", "id", "static", "user_key", "timestamp", "behavior", "drop")
USER_KEY_COLUMN = "user_key"
ROW_GROUP_SIZE = 65_536
FILE_ROWS = 4_000_000


# ------------------------------------------------------------------------------------------ config
@dataclass
class ColumnSpec:
    """The role of one column of the input files (see the module docstring)."""

    role: Literal["label", "dense", "id", "static", "user_key", "timestamp", "behavior", "drop"]
    transform: Literal["none", "log1p"] = "none"
    fill: float = 0.0
    min_count: Optional[int] = None
    hash_buckets: Optional[int] = None
    hash: Literal["string", "int", "hex"] = "string"
    group: Optional[str] = None
    multi_hot: Optional[str] = None
    user_key: bool = False
    item_key: bool = False
    item_side: bool = False
    time_format: Optional[str] = None

    def __post_init__(self) -> None:
        sparse = self.role in ("id", "static")
        check(self.role == "dense" or self.transform == "none", "transform", "only dense columns have a transform")
        check(self.role == "static" or self.group is None, "group", "only static columns have a group")
        check(self.role != "static" or bool(self.group), "group", "a static column needs its semantic group")
        check(sparse or self.hash_buckets is None, "hash_buckets", "only id / static columns are hashed")
        check(self.hash_buckets is None or self.hash_buckets >= 1, "hash_buckets", "must be >= 1")
        check(sparse or self.min_count is None, "min_count", "only id / static columns have a vocabulary")
        check(self.min_count is None or self.min_count >= 1, "min_count", "must be >= 1")
        check(sparse or self.multi_hot is None, "multi_hot", "only id / static columns are multi-hot")
        check(self.multi_hot is None or len(self.multi_hot) >= 1, "multi_hot", "the separator cannot be empty")
        check(sparse or not self.user_key, "user_key", "only an id / static column can also be the user key "
              "(use role: user_key for a key that is not a feature)")
        check(self.role == "id" or not self.item_key, "item_key", "only an id column can be the item key")
        check(sparse or not self.item_side, "item_side", "only id / static columns are item side features")
        check(self.role == "timestamp" or self.time_format is None, "time_format", "only for role: timestamp")
        check(not (self.item_key and self.multi_hot), "multi_hot", "the item key is single-valued")

    @property
    def is_sparse(self) -> bool:
        return self.role in ("id", "static")


@dataclass
class SplitConfig:
    """How rows are split. ``auto``: given splits when there are any, else ``random`` (tables) or
    ``leave_last_out`` (interactions). ``time``: ``valid_from`` / ``test_from`` cutoffs on the
    timestamp column (interactions also accept fractions: cutoffs at the time quantiles)."""

    method: Literal["auto", "random", "time", "leave_last_out", "given"] = "auto"
    train_frac: float = 0.8
    valid_frac: float = 0.1
    valid_from: Optional[Union[float, str]] = None
    test_from: Optional[Union[float, str]] = None

    def __post_init__(self) -> None:
        check(0 < self.train_frac <= 1 and 0 <= self.valid_frac and self.train_frac + self.valid_frac <= 1,
              "train_frac", "need 0 < train_frac, 0 <= valid_frac and train_frac + valid_frac <= 1")
        check((self.valid_from is None) == (self.test_from is None), "test_from",
              "give both valid_from and test_from (or neither)")


@dataclass
class NegativesConfig:
    """Sampled negatives of an interaction log: ``strategy`` uniform over the catalog, ``popularity``
    (an item is drawn as often as it is a positive: popularity alone cannot tell them apart) or
    ``none`` (the log has labels); ``ratio`` negatives per positive. ``sample_from``:
    ``train_positives`` (default) draws the negatives of train rows only from items with a train
    positive (valid / test negatives from the whole catalog; see
    :func:`store_rec.data.sampling.resample_train_negatives`), ``catalog`` every split's from the
    whole catalog, ``split_positives`` every split's from that split's positive items
    (:func:`store_rec.data.sampling.split_matched_negatives`)."""

    strategy: Literal["auto", "uniform", "popularity", "none"] = "auto"
    ratio: int = 4
    max_rounds: int = 100
    sample_from: Literal["train_positives", "catalog", "split_positives"] = "train_positives"

    def __post_init__(self) -> None:
        check(self.ratio >= 0, "ratio", "must be >= 0")
        check(self.max_rounds >= 1, "max_rounds", "must be >= 1")


@dataclass
class InteractionsConfig:
    """``kind: interactions`` options. ``positive``: behavior values that are positives (the rest are
    explicit negatives); empty = every row of the log is a positive (implicit feedback)."""

    positive: List[str] = field(default_factory=list)
    negatives: NegativesConfig = field(default_factory=NegativesConfig)
    min_user_interactions: int = 1
    # history lists (role history, store_rec.data.history): the last history_len positives before each
    # row; 0 = none. history_sides: item_side columns mirrored as hist_<column> (null: every single-valued one)
    history_len: int = 0
    history_sides: Optional[List[str]] = None

    def __post_init__(self) -> None:
        check(self.min_user_interactions >= 1, "min_user_interactions", "must be >= 1")
        check(self.history_len >= 0, "history_len", f"must be >= 0 (0 = no history), got {self.history_len}")


@dataclass
class TableConfig:
    """The YAML schema of ``data prepare table`` (see the module docstring)."""

    columns: Dict[str, ColumnSpec]
    kind: Literal["table", "interactions"] = "table"
    name: str = ""
    format: Literal["auto", "csv", "tsv", "parquet"] = "auto"
    delimiter: Optional[str] = None
    header: bool = True
    min_count: int = 1
    split: SplitConfig = field(default_factory=SplitConfig)
    interactions: InteractionsConfig = field(default_factory=InteractionsConfig)

    def __post_init__(self) -> None:
        check(bool(self.columns), "columns", "name every column of the files with its role")
        check(self.min_count >= 1, "min_count", "must be >= 1")
        check(self.delimiter is None or len(self.delimiter) == 1, "delimiter", "one character")
        roles: Dict[str, List[str]] = {}
        for name, c in self.columns.items():
            check(bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", name)) and name != USER_KEY_COLUMN
                  and not re.fullmatch(r"sid_\d+", name), f"columns.{name}",
                  f"column name {name!r} is not usable (letters, digits, _ . -; not {USER_KEY_COLUMN!r} or sid_N)")
            roles.setdefault(c.role, []).append(name)
        for role in ("label", "timestamp", "user_key", "behavior"):
            check(len(roles.get(role, [])) <= 1, f"columns.{roles.get(role, ['?'])[-1]}.role",
                  f"only one column can have role {role} (have {roles.get(role)})")
        users = self.user_columns
        check(len(users) <= 1, f"columns.{users[-1] if users else '?'}", f"only one user key (have {users})")
        items = [n for n, c in self.columns.items() if c.item_key]
        check(len(items) <= 1, f"columns.{items[-1] if items else '?'}.item_key", f"only one item key (have {items})")
        check(bool(self.sparse_columns), "columns", "need at least one id or static column")
        if self.kind == "table":
            check(len(roles.get("label", [])) == 1, "columns", "a table needs one column with role: label")
            check(not roles.get("behavior"), f"columns.{roles.get('behavior', ['?'])[0]}.role",
                  "role behavior is for kind: interactions (use role: label with 0/1 values)")
        else:
            check(bool(users), "columns", "an interaction log needs a user column (role: user_key, or user_key: true)")
            check(bool(items), "columns", "an interaction log needs an item column (role: id, item_key: true)")
            it = self.columns[items[0]]
            check(it.hash_buckets is None, f"columns.{items[0]}.hash_buckets",
                  "the item key of an interaction log keeps a vocabulary (sequences use its ids)")
            check(not (roles.get("label") and roles.get("behavior")), "columns",
                  "give a label column or a behavior column, not both")
            check(bool(roles.get("behavior")) or not self.interactions.positive, "interactions.positive",
                  "positive behavior values need a column with role: behavior")
            check(not roles.get("behavior") or bool(self.interactions.positive), "interactions.positive",
                  "list the behavior values that are positives (e.g. [buy, cart])")
        hist = self.interactions
        check(self.kind == "interactions" or (hist.history_len == 0 and hist.history_sides is None),
              "interactions.history_len", "history lists are built for kind: interactions (a user-item log)")
        for i, side in enumerate(hist.history_sides or []):
            spec = self.columns.get(side)
            check(spec is not None and spec.is_sparse and spec.item_side and not spec.multi_hot,
                  f"interactions.history_sides[{i}]",
                  f"{side!r} is not a single-valued id / static column with item_side: true")
            check(hist.history_len > 0, "interactions.history_sides", "needs interactions.history_len > 0")
        check(len(set(hist.history_sides or [])) == len(hist.history_sides or []), "interactions.history_sides",
              "lists a column twice")
        if self.split.method == "time" or self.split.valid_from is not None:
            check(bool(roles.get("timestamp")), "split.method", "a time split needs a column with role: timestamp")
        check(self.kind == "interactions" or self.split.method != "leave_last_out", "split.method",
              "leave_last_out is for kind: interactions")
        check(self.kind == "interactions" or self.split.method != "time" or self.split.valid_from is not None,
              "split.valid_from", "a table's time split needs valid_from and test_from cutoffs (streaming: no "
              "quantile pass)")

    # ---- column lists
    def names(self) -> List[str]:
        return list(self.columns)

    def with_role(self, role: str) -> List[str]:
        return [n for n, c in self.columns.items() if c.role == role]

    @property
    def sparse_columns(self) -> List[str]:
        return [n for n, c in self.columns.items() if c.is_sparse]

    @property
    def user_columns(self) -> List[str]:
        return [n for n, c in self.columns.items() if c.role == "user_key" or c.user_key]

    @property
    def user_column(self) -> Optional[str]:
        u = self.user_columns
        return u[0] if u else None

    @property
    def item_column(self) -> Optional[str]:
        return next((n for n, c in self.columns.items() if c.item_key), None)

    @property
    def label_column(self) -> Optional[str]:
        return next(iter(self.with_role("label")), None)

    @property
    def time_column(self) -> Optional[str]:
        return next(iter(self.with_role("timestamp")), None)

    def min_count_of(self, name: str) -> int:
        c = self.columns[name]
        return c.min_count if c.min_count is not None else self.min_count

    def vocab_columns(self) -> List[str]:
        return [n for n in self.sparse_columns if self.columns[n].hash_buckets is None]


def load_table_config(schema: Union[str, os.PathLike, Dict[str, Any], TableConfig],
                      overrides: Optional[Dict[str, Any]] = None) -> TableConfig:
    if schema is None:
        raise UserError("prepare table: --schema is required (a YAML file giving each column its role; "
                        "see datasets/README.md)")
    return load_dataset_config(TableConfig, schema, overrides)


# ------------------------------------------------------------------------------------------ values
def _col_as_string(col) -> pa.ChunkedArray:
    if isinstance(col, pa.Array):
        col = pa.chunked_array([col])
    if pa.types.is_dictionary(col.type):
        col = pc.cast(col, pa.string())
    return col if pa.types.is_string(col.type) else pc.cast(col, pa.string())


def _bad_number(col) -> np.ndarray:
    """``bool[N]``: non-null values that are not finite numbers (string columns: by regex)."""
    if pa.types.is_string(col.type) or pa.types.is_dictionary(col.type):
        s = _col_as_string(col)
        ok = pc.fill_null(pc.match_substring_regex(s, NUMERIC_RE), True)
        return ~np.asarray(ok.to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_boolean(col.type) or pa.types.is_integer(col.type):
        return np.zeros(len(col), bool)
    x = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    return ~np.isfinite(np.nan_to_num(np.asarray(x, np.float64), nan=0.0))


def _as_float(col) -> np.ndarray:
    """Numeric column -> ``float64[N]``; null and (strings) values that are not numbers -> NaN."""
    if pa.types.is_string(col.type) or pa.types.is_dictionary(col.type):
        col = _col_as_string(col)
        col = pc.if_else(pc.fill_null(pc.match_substring_regex(col, NUMERIC_RE), False), col,
                         pa.scalar(None, pa.string()))
    if pa.types.is_boolean(col.type):
        col = pc.cast(col, pa.int8())
    return np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), np.float64)


def parse_time(col, fmt: Optional[str]) -> Tuple[np.ndarray, np.ndarray]:
    """Timestamp column -> (``float64[N]`` seconds or raw numbers, ``bool[N]`` bad (null / unparsable)).

    Numbers are kept as they are (any unit); with ``fmt`` strings are parsed by ``strptime``; otherwise
    strings must be numbers or ISO 8601 (``2024-01-31`` / ``2024-01-31 12:00:00``)."""
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        t = pc.cast(pc.cast(col, pa.timestamp("s")), pa.int64())
        arr = np.asarray(t.to_numpy(zero_copy_only=False), np.float64)
        return np.nan_to_num(arr, nan=0.0), np.isnan(arr)
    if not (pa.types.is_string(col.type) or pa.types.is_dictionary(col.type)):
        arr = _as_float(col)
        return np.nan_to_num(arr, nan=0.0), ~np.isfinite(arr)
    s = _col_as_string(col)
    if fmt is None:
        num = pc.fill_null(pc.match_substring_regex(s, NUMERIC_RE), False)
        if pc.all(num).as_py():
            arr = _as_float(s)
            return arr, ~np.isfinite(arr)
        try:
            t = pc.cast(pc.cast(s, pa.timestamp("s")), pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            bad = ~np.asarray(num.to_numpy(zero_copy_only=False), dtype=bool)
            return np.zeros(len(s)), bad
    else:
        t = pc.cast(pc.strptime(s, format=fmt, unit="s", error_is_null=True), pa.int64())
    arr = np.asarray(t.to_numpy(zero_copy_only=False), np.float64)
    return np.nan_to_num(arr, nan=0.0), np.isnan(arr)


def cutoff_value(v: Union[float, str, None], fmt: Optional[str]) -> Optional[float]:
    if v is None or isinstance(v, (int, float)):
        return None if v is None else float(v)
    t, bad = parse_time(pa.chunked_array([pa.array([str(v)])]), fmt)
    if bad[0]:
        raise ConfigError(f"split: cutoff {v!r} is not a number or a date the timestamp column can be compared to")
    return float(t[0])


def hash_strings(values: pa.Array) -> np.ndarray:
    """Deterministic 64-bit hash of each string (polynomial over its UTF-8 bytes, splitmix64-mixed),
    ``uint64[N]``; nulls hash like ``""``. The same on every machine and in every process."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if not pa.types.is_string(values.type):
        values = pc.cast(values, pa.string())
    values = pc.fill_null(values, "")
    n = len(values)
    offsets = np.frombuffer(values.buffers()[1], np.int32, n + 1, values.offset * 4).astype(np.int64)
    data = np.frombuffer(values.buffers()[2], np.uint8) if values.buffers()[2] is not None else np.zeros(0, np.uint8)
    start, end = offsets[0], offsets[-1]
    b = data[start:end].astype(np.uint64)
    lens = np.diff(offsets)
    out = np.zeros(n, np.uint64)
    if len(b):
        pos_in = np.arange(len(b), dtype=np.int64) - np.repeat(offsets[:-1] - start, lens)
        maxlen = int(lens.max())
        with np.errstate(over="ignore"):
            powers = np.cumprod(np.r_[np.uint64(1), np.full(maxlen, 1099511628211, np.uint64)].astype(np.uint64),
                                dtype=np.uint64)[:maxlen]
            terms = (b + np.uint64(1)) * powers[pos_in]
            nz = lens > 0
            sums = np.add.reduceat(terms, (offsets[:-1] - start)[nz]) if nz.any() else np.zeros(0, np.uint64)
            out[nz] = sums
            out = out + lens.astype(np.uint64)
    return splitmix64(out)


def hash_column(col, spec: ColumnSpec, name: str) -> np.ndarray:
    """A column's values -> ``int64`` bucket ids in ``[0, hash_buckets)`` (missing -> 0)."""
    buckets = int(spec.hash_buckets)  # type: ignore[arg-type]
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    null = np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if spec.hash == "hex":
        from store_rec.data.criteo import hash_column as hex_hash

        return hex_hash(pa.chunked_array([_col_as_string(col).combine_chunks()]), buckets, name, name)
    if spec.hash == "int":
        if pa.types.is_integer(col.type):
            v = np.asarray(pc.fill_null(col, 0).to_numpy(zero_copy_only=False), np.int64)
        else:
            s = _col_as_string(col).combine_chunks()
            ok = pc.fill_null(pc.match_substring_regex(s, r"^\s*-?[0-9]+\s*$"), True)
            if not pc.all(ok).as_py():
                bad = s.filter(pc.invert(ok))[0].as_py()
                raise DataError(f"column {name!r}: hash: int needs integer values, got {bad!r}")
            v = np.asarray(pc.cast(pc.fill_null(s, "0"), pa.int64()).to_numpy(zero_copy_only=False), np.int64)
        return np.where(null, 0, np.mod(v, buckets)).astype(np.int64)
    h = hash_strings(_col_as_string(col).combine_chunks())
    return np.where(null, 0, (h % np.uint64(buckets)).astype(np.int64))


def user_key_of(col) -> np.ndarray:
    """The user key column -> ``int64`` (integers kept, anything else a 63-bit hash of its string)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_integer(col.type):
        return np.asarray(pc.fill_null(col, -1).to_numpy(zero_copy_only=False), np.int64)
    return (hash_strings(_col_as_string(col).combine_chunks()) >> np.uint64(1)).astype(np.int64)


# ------------------------------------------------------------------------------------------ chunks
@dataclass
class _Plan:
    """What every worker needs (picklable)."""

    cfg: TableConfig
    fmt: str                         # csv | tsv | parquet | auto (per file, by suffix)
    header: bool
    delimiter: Optional[str]
    seed: int
    method: str                      # given | random | time
    cutoffs: Tuple[Optional[float], Optional[float]]
    skip_bad_rows: bool
    block_size: int
    tmp: str = ""
    want_sequences: bool = False


def _header(plan: _Plan, path: Path) -> bool:
    """Whether ``path`` starts with a header line (parquet files have none)."""
    return plan.header and file_format(path, plan.fmt) != "parquet"


def _line(path: Path, header: bool, row: int) -> str:
    return f"line {row + 1 + int(header)}" if path.suffix.lower() not in (".parquet", ".pq") else f"row {row + 1}"


def _parsed_chunks(plan: _Plan, path: Path, file_index: int, split: Optional[str]
                   ) -> Iterator[Tuple[int, pa.Table, np.ndarray, Dict[str, np.ndarray], int]]:
    """Every chunk of ``path`` read as it streams (:func:`~store_rec.data.streaming.iter_chunks` with the
    plan's format, header, delimiter and block size) and validated by :func:`_parse_chunk`:
    ``(index of the chunk's first row in the file, *_parse_chunk's result)``."""
    for first, t in iter_chunks(path, fmt=file_format(path, plan.fmt), columns=plan.cfg.names(), header=_header(plan, path),
                                delimiter=plan.delimiter, skip_bad_rows=plan.skip_bad_rows, block_size=plan.block_size):
        yield (first, *_parse_chunk(plan, path, file_index, split, first, t))


def _parse_chunk(plan: _Plan, path: Path, file_index: int, split: Optional[str], first: int, t: pa.Table
                 ) -> Tuple[pa.Table, np.ndarray, Dict[str, np.ndarray], int]:
    """Validate one chunk; returns (kept rows, split codes, numeric columns (label/dense/time), skipped)."""
    cfg = plan.cfg
    bad = np.zeros(t.num_rows, bool)
    why: List[Tuple[np.ndarray, str]] = []
    num: Dict[str, np.ndarray] = {}
    lab = cfg.label_column
    if lab is not None:
        b = _bad_number(t.column(lab)) | np.asarray(t.column(lab).is_null().to_numpy(zero_copy_only=False), bool)
        x = _as_float(t.column(lab)) if not b.all() else np.zeros(t.num_rows)
        b |= ~np.isin(np.nan_to_num(x, nan=-1.0), (0.0, 1.0))
        why.append((b, f"column {lab!r}: label must be 0 or 1"))
        bad |= b
        num[lab] = x
    for d in cfg.with_role("dense"):
        b = _bad_number(t.column(d))
        why.append((b, f"column {d!r}: not a finite number"))
        bad |= b
    tcol = cfg.time_column
    if tcol is not None:
        tv, b = parse_time(t.column(tcol), cfg.columns[tcol].time_format)
        why.append((b, f"column {tcol!r}: missing or unparsable timestamp"))
        bad |= b
        num[tcol] = tv
    skipped = 0
    if bad.any():
        if not plan.skip_bad_rows:
            for b, msg in why:
                if b.any():
                    i = int(np.flatnonzero(b)[0])
                    col = msg.split("'")[1]
                    raise DataError(f"{path}: {_line(path, _header(plan, path), first + i)}: {msg}, got "
                                    f"{t.column(col)[i].as_py()!r} (use --skip-bad-rows to skip malformed rows)")
        keep = ~bad
        skipped = int(bad.sum())
        t = t.filter(pa.array(keep))
        num = {k: v[keep] for k, v in num.items()}
        rows = np.flatnonzero(keep) + first
    else:
        rows = np.arange(first, first + t.num_rows)
    if split is not None:
        codes = np.full(t.num_rows, SPLITS.index(split), np.int8)
    elif plan.method == "time":
        codes = time_cutoff_codes(num[tcol], *plan.cutoffs)  # type: ignore[index, arg-type]
    else:
        u = row_uniform(plan.seed, file_index, first, int(rows[-1]) - first + 1)[rows - first] if len(rows) \
            else np.zeros(0)
        codes = random_codes(u, plan.cfg.split.train_frac, plan.cfg.split.valid_frac)
    for d in cfg.with_role("dense"):
        spec = cfg.columns[d]
        x = _as_float(t.column(d))
        x = np.where(np.isnan(x), spec.fill, x)
        if spec.transform == "log1p":
            x = np.log1p(np.maximum(x, 0.0))
        num[d] = x.astype(np.float32)
    return t, codes, num, skipped


def _multi(col, sep: str) -> pa.Array:
    s = _col_as_string(col).combine_chunks()
    lists = pc.split_pattern(pc.fill_null(s, ""), sep)
    flat = lists.flatten()
    keep = pc.not_equal(pc.utf8_trim_whitespace(flat), "")
    # drop empty items (a missing field is an empty list)
    offsets = lists.offsets.to_numpy()
    kept = np.asarray(keep.to_numpy(zero_copy_only=False), bool)
    cum = np.r_[0, np.cumsum(kept)]
    new_off = cum[offsets - offsets[0]].astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(new_off), flat.filter(pa.array(kept)))


def _count_file(plan: _Plan, file_index: int, path: str, split: Optional[str]) -> Dict[str, Any]:
    """Pass 1 over one file: value counts of the vocabulary columns on train rows."""
    cfg = plan.cfg
    path_ = Path(path)
    cols = cfg.vocab_columns()
    parts: Dict[str, List[pa.Table]] = {c: [] for c in cols}
    rows = skipped = 0
    for _, t, codes, _, sk in _parsed_chunks(plan, path_, file_index, split):
        skipped += sk
        train = t.filter(pa.array(codes == 0)) if not (codes == 0).all() else t
        rows += train.num_rows
        for c in cols:
            col = train.column(c)
            sep = cfg.columns[c].multi_hot
            vals = pc.list_flatten(_multi(col, sep)) if sep else _col_as_string(col)
            vc = pc.value_counts(vals)
            parts[c].append(pa.table({"v": vc.field("values"), "n": vc.field("counts")}))
            if len(parts[c]) >= 16:
                parts[c] = [_merge_counts(parts[c])]
    return {"counts": {c: _merge_counts(p) for c, p in parts.items()}, "train_rows": rows, "skipped": skipped}


def _merge_counts(parts: List[pa.Table]) -> pa.Table:
    if not parts:
        return pa.table({"v": pa.array([], pa.string()), "n": pa.array([], pa.int64())})
    t = pa.concat_tables(parts)
    if len(parts) == 1:
        return t
    g = t.group_by("v").aggregate([("n", "sum")])
    return pa.table({"v": g.column("v"), "n": g.column("n_sum")})


def arrow_schema_of(cfg: TableConfig) -> pa.Schema:
    fields = [pa.field(cfg.label_column or "label", pa.float32())]
    fields += [pa.field(d, pa.float32()) for d in cfg.with_role("dense")]
    for n in cfg.sparse_columns:
        fields.append(pa.field(n, pa.list_(pa.int64()) if cfg.columns[n].multi_hot else pa.int64()))
    if cfg.user_column is not None:
        fields.append(pa.field(USER_KEY_COLUMN, pa.int64()))
    return pa.schema(fields)


class _FileParts:
    """Parquet files of one (input file, split): ``split/part-FFFFF-KKK.parquet``, rolled every FILE_ROWS."""

    def __init__(self, root: Path, split: str, file_index: int, schema: pa.Schema, label: str):
        self.root, self.split, self.file_index, self.schema, self.label = root, split, file_index, schema, label
        self.files: List[str] = []
        self.rows = self.positives = self._in_file = 0
        self._w: Optional[pq.ParquetWriter] = None

    def write(self, t: pa.Table) -> None:
        self.positives += int(np.count_nonzero(t.column(self.label).to_numpy() > 0.5))
        off = 0
        while off < t.num_rows:
            if self._w is None or self._in_file >= FILE_ROWS:
                self.close()
                rel = f"{self.split}/part-{self.file_index:05d}-{len(self.files):03d}.parquet"
                (self.root / self.split).mkdir(parents=True, exist_ok=True)
                self._w = pq.ParquetWriter(self.root / rel, self.schema, compression="zstd")
                self.files.append(rel)
                self._in_file = 0
            n = min(t.num_rows - off, FILE_ROWS - self._in_file)
            self._w.write_table(t.slice(off, n), row_group_size=ROW_GROUP_SIZE)
            off += n
            self._in_file += n
            self.rows += n

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None

    def info(self) -> SplitInfo:
        return SplitInfo(files=list(self.files), rows=self.rows, positives=self.positives)


def _write_file(plan: _Plan, file_index: int, path: str, split: Optional[str]) -> Dict[str, Any]:
    """Pass 2 over one file: encode and write its rows into the splits (under ``plan.tmp``)."""
    cfg = plan.cfg
    path_ = Path(path)
    root = Path(plan.tmp)
    vocabs = {c: load_vocab(root, c) for c in cfg.vocab_columns()}
    schema = arrow_schema_of(cfg)
    label = schema.names[0]
    lab = str(cfg.label_column)  # a table always has one (TableConfig checks)
    out: Dict[str, _FileParts] = {}
    max_len = {n: 1 for n in cfg.sparse_columns}
    skipped = 0
    seq: Dict[str, List[np.ndarray]] = {"user": [], "item": [], "time": []}
    ucol, icol, tcol = cfg.user_column, cfg.item_column, cfg.time_column
    try:
        for first, t, codes, num, sk in _parsed_chunks(plan, path_, file_index, split):
            skipped += sk
            cols: Dict[str, Any] = {label: pa.array(num[lab].astype(np.float32))}
            for d in cfg.with_role("dense"):
                cols[d] = pa.array(num[d])
            for n in cfg.sparse_columns:
                spec = cfg.columns[n]
                col = t.column(n)
                if spec.multi_hot:
                    lists = _multi(col, spec.multi_hot)
                    if spec.hash_buckets is not None:
                        flat = hash_column(lists.flatten(), spec, n)
                        enc = pa.ListArray.from_arrays(pc.subtract(lists.offsets, lists.offsets[0]), pa.array(flat))
                    else:
                        enc = vocabs[n].encode_lists(lists)
                    if len(enc):
                        max_len[n] = max(max_len[n], int(pc.max(pc.list_value_length(enc)).as_py() or 1))
                    cols[n] = enc
                elif spec.hash_buckets is not None:
                    cols[n] = pa.array(hash_column(col, spec, n))
                else:
                    cols[n] = pa.array(vocabs[n].encode(_col_as_string(col)), pa.int64())
            if ucol is not None:
                cols[USER_KEY_COLUMN] = pa.array(user_key_of(t.column(ucol)))
            table = pa.table(cols, schema=schema)
            for i, s in enumerate(SPLITS):
                sel = codes == i
                if not sel.any():
                    continue
                part = table if sel.all() else table.filter(pa.array(sel))
                if s not in out:
                    out[s] = _FileParts(root, s, file_index, schema, label)
                out[s].write(part)
            if plan.want_sequences:
                sel = (codes == 0) & (num[lab] > 0.5)
                seq["user"].append(cols[USER_KEY_COLUMN].to_numpy()[sel])
                seq["item"].append(np.asarray(cols[str(icol)].to_numpy())[sel])
                seq["time"].append(num[tcol][sel] if tcol else (  # no timestamp: file order
                    file_index * 2.0 ** 40 + np.arange(first, first + t.num_rows, dtype=np.float64))[sel])
    finally:
        for p in out.values():
            p.close()
    res: Dict[str, Any] = {"splits": {s: p.info() for s, p in out.items()}, "max_len": max_len, "skipped": skipped}
    if plan.want_sequences:
        res["seq"] = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in seq.items()}
    return res


def _run_tasks(fn, plan: _Plan, tasks: List[Tuple[int, str, Optional[str]]], workers: int) -> List[Dict[str, Any]]:
    """``fn(plan, file_index, path, split)`` over every file: in this process (workers <= 1) or in a pool."""
    if workers <= 1 or len(tasks) <= 1:
        return [fn(plan, *t) for t in tasks]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx) as ex:
        futs = [ex.submit(fn, plan, i, path, split) for i, path, split in tasks]
        return [f.result() for f in futs]


# ------------------------------------------------------------------------------------------ prepare
def input_files(source: Optional[str], splits: Optional[Dict[str, str]], resplit: bool
                ) -> Tuple[List[Tuple[Path, Optional[str]]], str]:
    """``[(file, given split or None)]`` and how the split is decided (``given`` / ``rule``)."""
    if splits:
        if source:
            raise UserError("give --source or --splits, not both (--splits names every input file)")
        given = resolve_given_splits(splits)
        if resplit:
            return [(f, None) for f, _ in given], "rule"
        return [(f, s) for f, s in given], "given"
    files = resolve_sources(source)
    detected = detect_given_splits(files) if not resplit else None
    if detected:
        logger.info("files named train/valid/test: keeping the given splits (%s)",
                    ", ".join(f"{f.name} -> {s}" for f, s in detected))
        return [(f, s) for f, s in detected], "given"
    return [(f, None) for f in files], "rule"


def prepare_table(source: Optional[str], out: os.PathLike, *, schema=None, config=None, splits=None,
                  resplit: bool = False, workers: int = 1, seed: int = 0, overwrite: bool = False,
                  skip_bad_rows: bool = False, block_size: int = BLOCK_SIZE, **overrides) -> DatasetSchema:
    """Prepare your own files described by the YAML ``schema`` (path, mapping or TableConfig) into ``out``.

    ``splits``: ``{"train": PATH, "valid": PATH, "test": PATH}`` given splits, kept row for row (unless
    ``resplit``). ``workers``: processes over files. ``overrides``: schema keys that win over the file.
    """
    cfg = load_table_config(schema if schema is not None else config, overrides)
    if isinstance(splits, str):
        from store_rec.data.splits import parse_splits_arg

        splits = parse_splits_arg(splits)
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    files, how = input_files(source, splits, resplit)
    if cfg.kind == "interactions":
        from store_rec.data.interactions import prepare_interactions

        return prepare_interactions(cfg, files, how, out, seed=seed, overwrite=overwrite,
                                    skip_bad_rows=skip_bad_rows, block_size=block_size,
                                    source=source or ",".join(f"{k}={v}" for k, v in (splits or {}).items()))
    return _prepare_table(cfg, files, how, out, seed=seed, overwrite=overwrite, skip_bad_rows=skip_bad_rows,
                          workers=workers, block_size=block_size,
                          source=source or ",".join(f"{k}={v}" for k, v in (splits or {}).items()))


def _method(cfg: TableConfig, how: str) -> str:
    m = cfg.split.method
    if how == "given":
        if m not in ("auto", "given"):
            raise UserError(f"split.method {m!r} but the input has given splits (files named train/valid/test or "
                            "--splits): they are kept; pass --resplit to split the rows again by the rule")
        return "given"
    if m == "given":
        raise UserError("split.method: given needs --splits train=...,valid=...,test=... "
                        "(or files named train* / valid* / test* in the source directory)")
    if m == "auto":
        return "time" if cfg.split.valid_from is not None else "random"
    return m


def _prepare_table(cfg: TableConfig, files: List[Tuple[Path, Optional[str]]], how: str, out: os.PathLike, *,
                   seed: int, overwrite: bool, skip_bad_rows: bool, workers: int, block_size: int,
                   source: str) -> DatasetSchema:
    from store_rec.data.writer import DatasetWriter

    t0 = time.perf_counter()
    method = _method(cfg, how)
    fmt = cfg.format  # per file when auto (e.g. CSV train, parquet test)
    tcol = cfg.time_column
    fmt_t = cfg.columns[tcol].time_format if tcol else None
    cutoffs = (cutoff_value(cfg.split.valid_from, fmt_t), cutoff_value(cfg.split.test_from, fmt_t))
    if method == "time" and cutoffs[0] is not None and cutoffs[1] < cutoffs[0]:  # type: ignore[operator]
        raise ConfigError("split.test_from: must not be before split.valid_from")
    want_seq = bool(cfg.user_column and cfg.item_column and cfg.columns[cfg.item_column].hash_buckets is None)
    plan = _Plan(cfg=cfg, fmt=fmt, header=cfg.header, delimiter=cfg.delimiter, seed=seed,
                 method=method, cutoffs=cutoffs, skip_bad_rows=skip_bad_rows, block_size=block_size,
                 want_sequences=want_seq)
    tasks = [(i, str(f), s) for i, (f, s) in enumerate(files)]
    vocab_cols = cfg.vocab_columns()
    passes = 1
    with DatasetWriter(out, overwrite=overwrite) as w:
        plan.tmp = str(w.root)
        vocabs: Dict[str, Vocab] = {}
        if vocab_cols:
            passes = 2
            count_tasks = [t for t in tasks if t[2] in (None, "train")]
            res = _run_tasks(_count_file, plan, count_tasks, workers)
            if sum(r["train_rows"] for r in res) == 0:
                raise UserError(f"{source}: the train split is empty; need more rows")
            for c in vocab_cols:
                m = _merge_counts([r["counts"][c] for r in res])
                vocabs[c] = Vocab._from_counts(m.column("v").combine_chunks(),
                                               m.column("n").to_numpy(), cfg.min_count_of(c))
                w.write_table(vocab_path(c), vocabs[c].to_table())
        res2 = _run_tasks(_write_file, plan, tasks, workers)
        skipped = sum(r["skipped"] for r in res2)
        max_len = {n: max(r["max_len"][n] for r in res2) for n in cfg.sparse_columns}
        for s in SPLITS:
            infos = [r["splits"][s] for r in res2 if s in r["splits"]]
            for i in infos or [SplitInfo(files=[], rows=0, positives=0)]:
                w.add_split_files(s, i)
        if sum(r["splits"]["train"].rows for r in res2 if "train" in r["splits"]) == 0:
            raise UserError(f"{source}: the train split is empty; need more rows")
        seq_info = None
        if want_seq:
            seq = {k: np.concatenate([r["seq"][k] for r in res2]) for k in ("user", "item", "time")}
            item = str(cfg.item_column)
            seq_info = write_sequences(w, seq["user"], seq["item"], seq["time"], item, vocabs[item].size - 1,
                                       "timestamp" if tcol else "file")
        sizes = {n: vocabs[n].size if n in vocabs else int(cfg.columns[n].hash_buckets or 0) for n in cfg.sparse_columns}
        sparse = [SparseFeature(name=n, role=cfg.columns[n].role, vocab_size=sizes[n],
                                group=cfg.columns[n].group, multi_hot=bool(cfg.columns[n].multi_hot),
                                max_len=max_len[n], vocab_file=vocab_path(n) if n in vocabs else None)
                  for n in cfg.sparse_columns]
        split_method = {"given": "given: the input files' own splits, kept row for row",
                        "random": (f"random: seeded (seed {seed}) i.i.d. per row (hash of file and row), "
                                   f"{cfg.split.train_frac:g}/{cfg.split.valid_frac:g}/"
                                   f"{1 - cfg.split.train_frac - cfg.split.valid_frac:g}"),
                        "time": f"time: {tcol} < {cutoffs[0]:g} train, < {cutoffs[1]:g} valid, rest test"
                        if cutoffs[0] is not None else "time"}[method]
        params = {"seed": seed, "kind": "table", "files": [f"{f}" + (f" ({s})" if s else "") for f, s in files],
                  "skipped_rows": skipped, "item_feature": cfg.item_column, "passes": passes,
                  "config": to_dict(cfg)}
        ds = DatasetSchema(dataset=cfg.name or "table", label=arrow_schema_of(cfg).names[0],
                           dense=cfg.with_role("dense"), sparse=sparse,
                           user_key=USER_KEY_COLUMN if cfg.user_column else None, sequences=seq_info,
                           split_method=split_method, source=source, params=params)
        w.commit(ds)
    logger.info("table: prepared in %.2fs (%d pass(es), %d worker(s))", time.perf_counter() - t0, passes, workers)
    return ds


def write_sequences(w, user: np.ndarray, item: np.ndarray, order: np.ndarray, item_feature: str,
                    num_items: int, order_name: str) -> Optional[SequenceInfo]:
    """``sequences.parquet``: per user the item ids (dataset vocab ids, OOV dropped) in ``order``."""
    keep = item > 0
    user, item, order = user[keep], item[keep], order[keep]
    if not len(user):
        return None
    idx = np.lexsort((order, user))
    user, item = user[idx], item[idx]
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    offsets = np.r_[starts, len(user)].astype(np.int32)
    table = pa.table({"user": pa.array(user[starts], pa.int64()),
                      "items": pa.ListArray.from_arrays(pa.array(offsets), pa.array(item.astype(np.int64)))})
    w.write_table("sequences.parquet", table)
    return SequenceInfo(file="sequences.parquet", item_feature=item_feature, num_items=int(num_items),
                        num_users=int(len(starts)), order=order_name)
