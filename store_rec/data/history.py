"""Behaviour-sequence features (role ``history``): each row's recent positive interactions, as lists.

One owner for how every preparer builds history columns (MovieLens, the generic interaction log,
the synthetic generator) and for the rules the loader and the models rely on.

**Rule.** For a row of user ``u`` at time ``t``, the history is the user's most recent ``<= N``
*history events* with ``time < t`` (strictly: never the row itself, never a later interaction, never
one at the same instant), ordered **oldest -> newest** (the newest is the last element; events with
equal times in the order of the preparer's log, e.g. file order). A history
event is a **positive** interaction (label 1, a real log row) **not in the test split**: sampled
negatives and explicit negatives never enter a history, and test interactions never enter any
history, so test rows see train + valid history only. A sampled negative copies the history (and
time) of the positive it was drawn for. A user with no earlier event gets an empty list (cold user);
there is no padding in the data: lists are jagged (``list<int64>``), and the model pads (left, so the
newest item stays last) to its own ``max_len``.

**Columns** (all aligned: the same list length on a row; ``N`` = ``history_len``):

* ``hist_<item>`` -- the events' item ids in the item feature's vocabulary (``history_of=<item>``);
  an item unseen in train maps to the OOV id 0 exactly as the target item would;
* ``hist_<side>`` -- per event the value of a static side feature of the item (e.g. MovieLens
  ``hist_year_bucket``, synthetic ``hist_category``) in that feature's vocabulary
  (``history_of=<side>``);
* ``hist_gap`` -- recency of each event (own vocabulary of :data:`GAP_VOCAB` ids, ``history_of=None``):
  ``1 + min(floor(log2(1 + gap)), GAP_VOCAB - 2)`` with ``gap = t_row - t_event > 0`` in the source's
  time unit (seconds for MovieLens ``ratings.dat``). A source without timestamps uses its log order
  as time (``gap`` = how many log rows back, i.e. a log-bucketed *position*); ``params["history"]
  ["time"]`` says which. Id 0 is never produced.

**Truncation** (one rule, at prepare and at load time): keep the ``n`` *newest* elements of every
list, i.e. the last ``n`` (:func:`truncate_lists`); ``n = 0`` leaves the rows without history.

**Memory.** Building the index (:func:`build_history_index`) holds about 40 bytes per row and 16 per
event; the index kept while writing costs 16 bytes per row plus 8 bytes per event and per column
(encoded event values), independent of ``N``. The lists themselves (up to ``rows x N`` entries)
are never built for a whole split: :func:`history_row_group_size` bounds the rows of a parquet row
group to ``~2**20 / N`` and the writer materialises ``<= 2**22`` list entries per column at a time
(32 MiB of int64 per column). Measured on the MovieLens-1M pairs (5.0 M rows, 2 shared cores):
``N = 128`` prepares in 72 s with a peak RSS of 1,548 MiB against 15 s / 1,603 MiB without history
(the lists, ~440 M entries, are never resident; datasets/movielens.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa

from store_rec.data.schema import HISTORY, DatasetSchema, SparseFeature
from store_rec.errors import DataError, UserError

HIST_PREFIX = "hist_"
GAP_COLUMN = "hist_gap"
#: ids of the recency list: 0 (never produced) and 1 .. GAP_VOCAB - 1 log2 buckets of the gap
GAP_VOCAB = 64
#: a split table handed to the writer with history carries this int64 column: the *source row* of
#: each output row (the row of the log whose history and time it has); the writer drops it
HISTORY_ROW_COLUMN = "__history_row"
#: list entries materialised per column at a time while writing (int64: 32 MiB)
ENTRIES_PER_CHUNK = 1 << 22
RULE = ("per row: the user's most recent <= max_len positive, non-test interactions with time strictly "
        "before the row's time, oldest -> newest; sampled negatives share their positive's history")

ArrayLike = Union[pa.Array, pa.ChunkedArray, np.ndarray]


def history_column(feature: str) -> str:
    """Name of the history list that mirrors ``feature``: ``hist_<feature>``."""
    return f"{HIST_PREFIX}{feature}"


def history_features(schema: DatasetSchema) -> List[SparseFeature]:
    """The ``history`` features of ``schema`` in schema order (aligned lists, oldest first)."""
    return [f for f in schema.sparse if f.role == HISTORY]


def check_history_len(value: object, key: str = "history_len", allow_none: bool = False) -> Optional[int]:
    """``value`` as a history length (``int >= 0``; ``None`` when ``allow_none``) or ``UserError`` naming ``key``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 0:
        raise UserError(f"{key}: must be an integer >= 0 (0 = no history){' or null' if allow_none else ''}, "
                        f"got {value!r}")
    return int(value)


def history_row_group_size(max_len: int, default: int) -> int:
    """Parquet row-group rows for a dataset with history lists of ``<= max_len``: about ``2**20 / max_len``
    rows (<= 8 MiB of int64 per history column in a row group), within ``[1024, default]``."""
    if max_len <= 0:
        return default
    return int(min(default, max(1024, (1 << 20) // max_len)))


def gap_buckets(gap: np.ndarray) -> np.ndarray:
    """Recency ids of positive gaps: ``1 + min(floor(log2(1 + gap)), GAP_VOCAB - 2)`` (int64, 1..63)."""
    g = np.maximum(np.asarray(gap, np.float64), 0.0)
    return 1 + np.minimum(np.floor(np.log2(1.0 + g)), GAP_VOCAB - 2).astype(np.int64)


def truncation_index(lengths: np.ndarray, n: int) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Keep the ``n`` newest (last) entries of lists of ``lengths``: ``(new lengths int64[R], new offsets
    int64[R+1], index into the old values or None when nothing is cut)``. Aligned lists share one index."""
    lengths = np.asarray(lengths, np.int64)
    if n < 0:
        raise ValueError(f"n={n}: must be >= 0")
    new = np.minimum(lengths, n)
    noffs = np.zeros(len(new) + 1, np.int64)
    np.cumsum(new, out=noffs[1:])
    if len(lengths) == 0 or lengths.max(initial=0) <= n:
        return lengths, noffs, None
    ends = np.cumsum(lengths)  # old offsets[1:]
    idx = np.repeat(ends - new - noffs[:-1], new)
    idx += np.arange(noffs[-1], dtype=np.int64)
    return new, noffs, idx


def truncate_lists(lengths: np.ndarray, offsets: np.ndarray, values: np.ndarray, n: int
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the ``n`` newest (last) entries of every list.

    Args: ``lengths int64[R]``, ``offsets int64[R+1]`` (``offsets[-1] == len(values)``), ``values``.
    Returns the truncated ``(lengths, offsets, values)``."""
    new, noffs, idx = truncation_index(lengths, n)
    if idx is None:
        return np.asarray(lengths, np.int64), offsets, values
    return new, noffs, values[idx]


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Concatenated ``arange(starts[i], starts[i] + lengths[i])`` and the offsets of each range."""
    offs = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offs[1:])
    return np.repeat(starts - offs[:-1], lengths) + np.arange(offs[-1]), offs


# ---------------------------------------------------------------------------------------- batch builder
@dataclass
class HistoryIndex:
    """Where each row's history lies among the log's history events.

    Attributes:
        events: ``int64[E]`` input-row index of every history event, sorted by (user, time, input order).
        end: ``int64[R]`` per input row, one past its newest history event in ``events``.
        length: ``int64[R]`` per input row, its history length (``<= max_len``): the history of row
            ``r`` is ``events[end[r] - length[r] : end[r]]``, oldest first.
        max_len: ``N``.
    """

    events: np.ndarray
    end: np.ndarray
    length: np.ndarray
    max_len: int

    def positions(self, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """For input rows ``rows``: ``(offsets int64[n+1], event positions int64[total])``; positions index
        ``events`` (and any per-event array), row ``i``'s history is ``pos[offsets[i]:offsets[i+1]]``."""
        rows = np.asarray(rows, np.int64)
        lens = self.length[rows]
        pos, offs = _ranges(self.end[rows] - lens, lens)
        return offs, pos


def build_history_index(user: np.ndarray, time: np.ndarray, eligible: np.ndarray, max_len: int) -> HistoryIndex:
    """Vectorised history index over ``R`` log rows (any order).

    Args:
        user: ``int64[R]`` user of each row (any integer code).
        time: ``[R]`` time of each row (numeric; equal times are simultaneous: never each other's history).
        eligible: ``bool[R]`` rows that are history events (positive, real interaction, not test).
        max_len: ``N >= 1``.

    Cost: two sorts of ``R`` keys (``O(R log R)``), ~40 bytes per row transient.
    """
    user = np.asarray(user)
    time = np.asarray(time)
    eligible = np.asarray(eligible, bool)
    if not (len(user) == len(time) == len(eligible)):
        raise ValueError("user, time and eligible must have the same length")
    if max_len < 1:
        raise ValueError(f"max_len={max_len}: must be >= 1")
    if np.issubdtype(time.dtype, np.floating) and not np.isfinite(time).all():
        i = int(np.flatnonzero(~np.isfinite(time))[0])
        raise DataError(f"history: row {i}: time is {time[i]} (NaN/inf)")
    _, urank = np.unique(user, return_inverse=True)
    _, trank = np.unique(time, return_inverse=True)
    urank = urank.reshape(-1).astype(np.int64)
    trank = trank.reshape(-1).astype(np.int64)
    t_count = int(trank.max(initial=0)) + 1
    key = urank * t_count + trank  # (user, time) order; < R**2 fits int64 for R < 3e9
    ev = np.flatnonzero(eligible)
    ev = ev[np.lexsort((ev, key[ev]))]  # by (user, time), ties in input order
    ev_key = key[ev]
    end = np.searchsorted(ev_key, key, side="left")  # events of an earlier user or same user, earlier time
    first = np.searchsorted(ev_key, urank * t_count, side="left")  # the user's first event
    length = np.minimum(end - first, max_len).astype(np.int64)
    return HistoryIndex(events=ev.astype(np.int64), end=end.astype(np.int64), length=length, max_len=int(max_len))


@dataclass
class HistorySource:
    """History of a log for :func:`store_rec.data.tabular.write_prepared`: the index plus, per column,
    the value of every log row (raw strings to encode with the ``history_of`` feature's vocabulary,
    or ``int64`` ids for hashed / already-encoded features).

    Attributes:
        index: :func:`build_history_index` over the log rows.
        item_feature: the item feature (``hist_<item_feature>`` holds its ids).
        values: ``history_of feature -> per-log-row values`` (the item first, then side features).
        time: ``[R]`` time of each log row (for ``hist_gap``).
        time_unit: words for ``params["history"]["time"]`` (e.g. ``"seconds (ratings.dat)"``, ``"log order"``).
        notes: extra ``params["history"]`` entries (e.g. how a multi-hot side was reduced).
    """

    index: HistoryIndex
    item_feature: str
    values: Dict[str, ArrayLike]
    time: np.ndarray
    time_unit: str
    notes: Dict[str, object] = field(default_factory=dict)
    _ids: Dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.item_feature not in self.values:
            raise ValueError(f"values must hold the item feature {self.item_feature!r}")

    @property
    def max_len(self) -> int:
        return self.index.max_len

    @property
    def columns(self) -> List[str]:
        """Output column names: ``hist_<item>``, ``hist_<side>``..., ``hist_gap``."""
        return [history_column(f) for f in self.values] + [GAP_COLUMN]

    def encode(self, vocabs: Mapping[str, object]) -> None:
        """Encode the events' values with the fitted vocabularies (``feature -> Vocab``); features not in
        ``vocabs`` (hashed) must already be int64 ids. Keeps only the ``E`` event values."""
        ev = self.index.events
        for feat, vals in self.values.items():
            if isinstance(vals, np.ndarray):
                self._ids[feat] = np.asarray(vals, np.int64)[ev]
                continue
            arr = vals.take(pa.array(ev)) if len(ev) else vals.slice(0, 0)
            if feat in vocabs:
                self._ids[feat] = np.asarray(vocabs[feat].encode(arr), np.int64)  # type: ignore[attr-defined]
            else:
                self._ids[feat] = np.asarray(arr.to_numpy(zero_copy_only=False), np.int64)
        self._ev_time = np.asarray(self.time)[ev]

    def lists(self, rows: np.ndarray) -> Dict[str, pa.ListArray]:
        """The history columns of log rows ``rows`` (after :meth:`encode`), aligned, oldest first."""
        if not self._ids:
            raise RuntimeError("HistorySource.lists before encode")
        rows = np.asarray(rows, np.int64)
        offs, pos = self.index.positions(rows)
        offsets = pa.array(offs.astype(np.int64))
        out: Dict[str, pa.ListArray] = {}
        for feat, ids in self._ids.items():
            out[history_column(feat)] = pa.LargeListArray.from_arrays(offsets, pa.array(ids[pos]))
        row_t = np.repeat(np.asarray(self.time)[rows], np.diff(offs))
        out[GAP_COLUMN] = pa.LargeListArray.from_arrays(offsets, pa.array(gap_buckets(row_t - self._ev_time[pos])))
        return {k: v.cast(pa.list_(pa.int64())) for k, v in out.items()}

    def features(self, vocab_size: Mapping[str, int]) -> List[SparseFeature]:
        """Schema entries of the history columns (``vocab_size``: of each ``history_of`` feature)."""
        out = [SparseFeature(name=history_column(f), role=HISTORY, vocab_size=int(vocab_size[f]), multi_hot=True,
                             max_len=self.max_len, history_of=f) for f in self.values]
        out.append(SparseFeature(name=GAP_COLUMN, role=HISTORY, vocab_size=GAP_VOCAB, multi_hot=True,
                                 max_len=self.max_len, history_of=None))
        return out

    def params(self) -> Dict[str, object]:
        """``schema.params["history"]`` (the writer adds ``mean_len`` per split)."""
        return history_params(self.max_len, self.item_feature, self.columns, self.time_unit,
                              events=int(len(self.index.events)), **self.notes)


def history_params(max_len: int, item_feature: str, columns: Sequence[str], time_unit: str, **extra
                   ) -> Dict[str, object]:
    """The ``schema.params["history"]`` record shared by every preparer."""
    return {"max_len": int(max_len), "item_feature": item_feature, "columns": list(columns), "rule": RULE,
            "time": time_unit, "gap": f"{GAP_COLUMN} = 1 + min(floor(log2(1 + t_row - t_event)), {GAP_VOCAB - 2})",
            **extra}


# ---------------------------------------------------------------------------------------- streaming builder
class RecentPositives:
    """Streaming history state for generated data: per user a ring buffer of its last ``N`` events.

    Used by the synthetic generator, whose click probability depends on the history itself, so rows
    must be labelled in time order. Memory: ``users x N x 16`` bytes (item id + time per slot).

    ``lists(users, t)`` gives the current history of distinct-or-not users (oldest first) for rows at
    time ``t``; ``push(users, items, t)`` appends one event per entry; entries of one call must have
    distinct users (call again for a user's next event).
    """

    def __init__(self, num_users: int, max_len: int):
        if max_len < 1:
            raise ValueError(f"max_len={max_len}: must be >= 1")
        self.max_len = int(max_len)
        self.item = np.zeros((num_users, max_len), np.int64)
        self.time = np.zeros((num_users, max_len), np.float64)
        self.count = np.zeros(num_users, np.int64)

    def lists(self, users: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(offsets int64[n+1], items int64[total], event times float64[total])`` of ``users``' histories."""
        users = np.asarray(users, np.int64)
        N = self.max_len
        c = self.count[users]
        lens = np.minimum(c, N)
        first = c - lens  # event number of the oldest kept event
        j, offs = _ranges(np.zeros(len(users), np.int64), lens)
        owner = np.repeat(np.arange(len(users)), lens)
        slot = (np.repeat(first, lens) + j) % N
        u = users[owner]
        return offs, self.item[u, slot], self.time[u, slot]

    def push(self, users: np.ndarray, items: np.ndarray, t: np.ndarray) -> None:
        users = np.asarray(users, np.int64)
        if len(np.unique(users)) != len(users):
            raise ValueError("push: users must be distinct within one call")
        slot = self.count[users] % self.max_len
        self.item[users, slot] = items
        self.time[users, slot] = t
        self.count[users] += 1
