"""MovieLens-1M as implicit-feedback CTR -> prepared parquet dataset (+ per-user item sequences).

``--source`` is the ml-1m directory; files are found in it or any subdirectory:

* interactions, first found of: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``: rating >= 4
  positive, < 4 an explicit negative, ordered by timestamp per user), ``ratings.parquet`` (columns
  ``userID``, ``movieID``: every pair positive, file order) or ``ratings_user_movie_pairs.tsv.gz``
  (``user<TAB>movie``, same);
* ``users.dat`` (``UserID::Gender::Age::Occupation::Zip-code``) and ``movies.dat``
  (``MovieID::Title::Genres``, latin-1).

Malformed lines (wrong field count, non-integer id, duplicate id in users/movies.dat, a movie id not
in movies.dat) are errors naming file and line (parquet: row); with ``skip_bad_rows`` they are skipped
and counted in ``params["skipped_rows"]`` (per file in ``params["skipped_rows_by_file"]``).

Rows: every positive, plus ``neg_ratio`` (default 4) sampled negatives per positive: movies of the
catalogue (movies with at least one interaction) that the user never interacted with, uniform,
seeded, with replacement across a user's positives (vectorised rejection sampling). Sampled
negatives go to the split of their positive. ``negatives_from`` (default ``train_positives``): the
negatives of **train** rows are drawn only from movies with a train positive (a movie whose positives
are all in valid / test would otherwise enter training only as a negative and, sharing the OOV SID
with every such movie, teach "OOV = negative": :func:`store_rec.data.sampling.resample_train_negatives`);
valid / test negatives are drawn from the whole catalogue as before, row for row. ``catalog``: every
split's negatives from the whole catalogue (the behaviour before this option). ``split_positives``:
every split's negatives from that split's positives, popularity-matched, so a movie that is new in
valid / test is as frequent among their negatives as among their positives
(:func:`store_rec.data.sampling.split_matched_negatives`; the protocol of the sequence experiments).
``params`` records the option and how many train negatives were drawn again (``train_negatives_resampled``).

Features: ``user_id`` and ``movie_id`` (role ``id``; ``movie_id`` is the item feature), static group
``user``: gender, age, occupation, zip_prefix (first ``zip_prefix_digits`` characters); group
``movie``: genres (multi-hot ``list<int64>``), year_bucket (release year from the title, bucketed by
``year_bucket_size`` years). ``user_key`` = raw MovieLens user id (int64). On ML-1M the static
vocabularies have 3 / 8 / 22 / 101 (gender / age / occupation / zip_prefix) and 19 / 19 (genres /
year_bucket) ids, OOV included.

Split (``split``): ``leave_last_out`` (default): per user, the last positive (and its negatives) is
test, the second-to-last valid, the rest train; users with fewer than 3 positives are train only.
With ratings.dat, explicit negatives go with the positive they follow in time. ``user_holdout``:
a seeded ``valid_frac`` / ``test_frac`` of users with all their rows.

History (``history_len`` N > 0; default 0 = none): role ``history`` columns ``hist_movie_id`` (the
user's last <= N positives strictly before the row, oldest first, never a test positive; see
:mod:`store_rec.data.history`), one side list per ``history_sides`` entry -- ``hist_genres`` (the
*first* genre listed in movies.dat, which lists genres alphabetically: one value per item keeps the
lists aligned) and ``hist_year_bucket`` -- and ``hist_gap``. "Before" is timestamp order with
ratings.dat (gap in seconds, equal timestamps never see each other) and file order otherwise (the
pairs files have no time: gap = positions back in the user's log).

``sequences.parquet``: per user, the movie_id vocab ids of the user's **train** positives in order
(file order, or timestamp order when present) — valid/test items are left out to avoid leakage
into pre-trained item embeddings.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from store_rec.config import check, to_dict
from store_rec.data.sampling import (pair_keys, resample_train_negatives, sample_negatives, split_matched_negatives,
                                    users_with_every_item)
from store_rec.data.csvio import RawTable, drop_or_raise, line_of_row, numeric_bad_mask, read_delimited
from store_rec.data.dsconfig import load_dataset_config
from store_rec.data.history import HISTORY_ROW_COLUMN, HistorySource, build_history_index
from store_rec.data.schema import ID, SPLITS, STATIC, DatasetSchema, SequenceInfo
from store_rec.data.tabular import FeatureSpec, write_prepared
from store_rec.errors import DataError, UserError

logger = logging.getLogger(__name__)

INTERACTION_FILES = ("ratings.dat", "ratings.parquet", "ratings_user_movie_pairs.tsv.gz")
USER_KEY_COLUMN = "user_key"
#: static movie features a history side list can mirror (genres: the first genre listed)
HISTORY_SIDES = ("genres", "year_bucket")


@dataclass
class MovieLensConfig:
    """MovieLens prepare options (see datasets/movielens.md)."""

    neg_ratio: int = 4
    split: Literal["leave_last_out", "user_holdout"] = "leave_last_out"
    valid_frac: float = 0.1
    test_frac: float = 0.1
    positive_threshold: float = 4.0
    max_users: Optional[int] = None
    zip_prefix_digits: int = 2
    year_bucket_size: int = 5
    min_count: int = 1
    max_sampling_rounds: int = 100
    history_len: int = 0
    history_sides: List[str] = field(default_factory=lambda: list(HISTORY_SIDES))
    negatives_from: Literal["train_positives", "catalog", "split_positives"] = "train_positives"

    def __post_init__(self) -> None:
        check(self.neg_ratio >= 0, "neg_ratio", "must be >= 0")
        check(0 <= self.valid_frac and 0 < self.test_frac and self.valid_frac + self.test_frac < 1,
              "test_frac", "need 0 <= valid_frac, 0 < test_frac, valid_frac + test_frac < 1")
        check(self.max_users is None or self.max_users >= 1, "max_users", "must be >= 1")
        check(1 <= self.zip_prefix_digits <= 5, "zip_prefix_digits", "must be in 1..5")
        check(self.year_bucket_size >= 1, "year_bucket_size", "must be >= 1")
        check(self.min_count >= 1, "min_count", "must be >= 1")
        check(self.max_sampling_rounds >= 1, "max_sampling_rounds", "must be >= 1")
        check(self.history_len >= 0, "history_len", f"must be >= 0 (0 = no history), got {self.history_len}")
        for i, side in enumerate(self.history_sides):
            check(side in HISTORY_SIDES, f"history_sides[{i}]", f"{side!r} is not one of {list(HISTORY_SIDES)}")
        check(len(set(self.history_sides)) == len(self.history_sides), "history_sides", "lists a feature twice")


# ---------------------------------------------------------------------------------------- files
def find_file(root: Path, name: str) -> Optional[Path]:
    if (root / name).is_file():
        return root / name
    hits = sorted(p for p in root.rglob(name) if p.is_file())
    return hits[0] if hits else None


def _locate(source) -> Tuple[Path, Path, Path]:
    if source is None or str(source) == "":
        raise UserError("movielens: --source is required (the ml-1m directory)")
    root = Path(source)
    if not root.exists():
        raise UserError(f"{root}: --source does not exist")
    if not root.is_dir():
        raise UserError(f"{root}: --source must be the ml-1m directory (with users.dat, movies.dat, ratings)")
    inter = next((p for p in (find_file(root, n) for n in INTERACTION_FILES) if p is not None), None)
    if inter is None:
        raise UserError(f"{root}: no interactions file found (looked for {', '.join(INTERACTION_FILES)} "
                        "in it and its subdirectories)")
    users, movies = find_file(root, "users.dat"), find_file(root, "movies.dat")
    for name, p in (("users.dat", users), ("movies.dat", movies)):
        if p is None:
            raise UserError(f"{root}: {name} not found in it or its subdirectories")
    return inter, users, movies  # type: ignore[return-value]


INT_RE = r"^\s*[0-9]+\s*$"
SKIP_HINT = "(use --skip-bad-rows to skip malformed rows)"


@dataclass
class Interactions:
    """Parsed interactions file.

    Attributes:
        path: the file.
        user, movie: ``int64[N]`` raw MovieLens ids.
        rating, ts: ``float64[N]`` / ``int64[N]`` (ratings.dat only, else None).
        row: ``int64[N]`` 0-based data row of each entry in the file (for error messages).
        skipped: malformed rows dropped (``skip_bad_rows``).
        text: whether the file is line based (rows map to line numbers).
    """

    path: Path
    user: np.ndarray
    movie: np.ndarray
    rating: Optional[np.ndarray]
    ts: Optional[np.ndarray]
    row: np.ndarray
    skipped: int
    text: bool

    def where(self, row: int) -> str:
        """``line N`` of data row ``row`` (0-based, no rows skipped) or ``row N`` for parquet."""
        if self.text and self.skipped == 0:
            lineno = line_of_row(self.path, False, int(row))
            if lineno > 0:
                return f"line {lineno}"
        return f"row {int(row) + 1}"

    def take(self, sel: np.ndarray) -> "Interactions":
        f = (lambda a: None if a is None else a[sel])
        return dataclasses.replace(self, user=self.user[sel], movie=self.movie[sel], rating=f(self.rating),
                                   ts=f(self.ts), row=self.row[sel])


def _bad_int(col) -> np.ndarray:
    """``bool[N]``: True where a value is null or not a non-negative integer."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_integer(col.type):
        return ~np.asarray(pc.fill_null(pc.greater_equal(col, 0), False).to_numpy(zero_copy_only=False), dtype=bool)
    s = pc.cast(col, pa.string())
    return ~np.asarray(pc.fill_null(pc.match_substring_regex(s, INT_RE), False).to_numpy(zero_copy_only=False),
                       dtype=bool)


def _check_ints(raw: RawTable, columns: Dict[str, str], skip_bad_rows: bool) -> RawTable:
    """Every ``columns`` (table column -> name for messages) value must be an integer id."""
    for c, label in columns.items():
        col = raw.table.column(c)
        raw = drop_or_raise(raw, _bad_int(col), skip_bad_rows,
                            lambda i, col=col, label=label: f"column {label!r}: expected a positive integer id, "
                                                            f"got {col[i].as_py()!r}")
    return raw


def _read_parquet_pairs(path: Path, skip_bad_rows: bool) -> Tuple[pa.Table, int]:
    try:
        t = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: cannot read parquet: {e}") from None
    cols = {c.lower(): c for c in t.column_names}
    for want in ("userid", "movieid"):
        if want not in cols:
            raise DataError(f"{path}: missing column {want!r} (has {t.column_names})")
    if t.num_rows == 0:
        raise DataError(f"{path}: empty file")
    t = t.select([cols["userid"], cols["movieid"]]).rename_columns(["user", "movie"])
    bad = np.zeros(t.num_rows, bool)
    for c, label in (("user", cols["userid"]), ("movie", cols["movieid"])):
        b = _bad_int(t.column(c))
        if b.any() and not skip_bad_rows:
            i = int(np.flatnonzero(b)[0])
            raise DataError(f"{path}: row {i + 1}: column {label!r}: expected a positive integer id, "
                            f"got {t.column(c)[i].as_py()!r} {SKIP_HINT}")
        bad |= b
    if bad.any():
        logger.warning("%s: skipped %d row(s) with invalid ids", path, int(bad.sum()))
        t = t.filter(pa.array(~bad))
    return t, int(bad.sum())


def read_interactions(path: Path, skip_bad_rows: bool = False) -> Interactions:
    """Parse the interactions file (ratings.dat, ratings.parquet or the user/movie pairs TSV).

    Malformed rows (wrong field count, non-integer id, rating or timestamp) are errors naming the file
    and line (parquet: row), or are dropped and counted with ``skip_bad_rows``.
    """
    name = path.name
    rating = ts = None
    if name.endswith(".parquet"):
        t, skipped = _read_parquet_pairs(path, skip_bad_rows)
        text = False
    elif name.endswith(".tsv.gz") or name.endswith(".tsv"):
        raw = read_delimited(path, ["user", "movie"], "\t", False, skip_bad_rows,
                             format_hint="user<TAB>movie (2 tab-separated fields)")
        raw = _check_ints(raw, {"user": "user", "movie": "movie"}, skip_bad_rows)
        t, skipped, text = raw.table, raw.skipped, True
    else:
        # ratings.dat: "::" separated; reading with ':' gives empty fields between the values
        names = ["user", "e1", "movie", "e2", "rating", "e3", "ts"]
        fmt = "UserID::MovieID::Rating::Timestamp"
        raw = read_delimited(path, names, ":", False, skip_bad_rows, format_hint=fmt)
        tb = raw.table
        sep_bad = np.zeros(tb.num_rows, bool)
        for e in ("e1", "e2", "e3"):  # a single ':' shifts a value into a separator slot
            sep_bad |= ~np.asarray(tb.column(e).is_null().to_numpy(zero_copy_only=False), dtype=bool)

        def line_text(i: int) -> str:
            return ":".join(tb.column(n)[i].as_py() or "" for n in names)

        raw = drop_or_raise(raw, sep_bad, skip_bad_rows, lambda i: f"expected {fmt}, got {line_text(i)!r}")
        raw = _check_ints(raw, {"user": "UserID", "movie": "MovieID", "ts": "Timestamp"}, skip_bad_rows)
        rcol = raw.table.column("rating")
        raw = drop_or_raise(raw, numeric_bad_mask(rcol) | np.asarray(
            rcol.is_null().to_numpy(zero_copy_only=False), dtype=bool), skip_bad_rows,
            lambda i: f"column 'Rating': expected a number, got {rcol[i].as_py()!r}")
        t, skipped, text = raw.table, raw.skipped, True
        rating = pc.cast(t.column("rating"), pa.float64()).to_numpy(zero_copy_only=False)
        ts = pc.cast(t.column("ts"), pa.int64()).to_numpy(zero_copy_only=False)
    if t.num_rows == 0:
        raise DataError(f"{path}: no valid rows ({skipped} malformed row(s) skipped)")
    user = pc.cast(t.column("user"), pa.int64()).to_numpy(zero_copy_only=False)
    movie = pc.cast(t.column("movie"), pa.int64()).to_numpy(zero_copy_only=False)
    return Interactions(path, user, movie, rating, ts, np.arange(len(user), dtype=np.int64), skipped, text)


def _read_dat(path: Path, fmt: str, skip_bad_rows: bool) -> Tuple[List[List[str]], int]:
    """``users.dat`` / ``movies.dat`` (latin-1, ``::``-separated, ``fmt`` e.g. ``MovieID::Title::Genres``).

    Returns (rows as field lists, skipped lines). A line with the wrong field count, a non-integer
    or duplicate id (first field) is an error naming file and line, or skipped with ``skip_bad_rows``.
    """
    fields = fmt.split("::")
    rows: List[List[str]] = []
    first_line_of: Dict[int, int] = {}
    skipped = 0
    with open(path, encoding="latin-1") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("::")
            problem = None
            if len(parts) != len(fields):
                problem = (f"expected {fmt} ({len(fields)} '::'-separated fields), got {len(parts)} field(s): "
                           f"{line[:80]!r}")
            elif not re.fullmatch(INT_RE, parts[0]):
                problem = f"{fields[0]}: expected a positive integer id, got {parts[0]!r}"
            elif int(parts[0]) in first_line_of:
                problem = f"duplicate {fields[0]} {int(parts[0])} (first on line {first_line_of[int(parts[0])]})"
            if problem is not None:
                if not skip_bad_rows:
                    raise DataError(f"{path}: line {lineno}: {problem} {SKIP_HINT}")
                skipped += 1
                continue
            first_line_of[int(parts[0])] = lineno
            rows.append(parts)
    if skipped:
        logger.warning("%s: skipped %d malformed line(s)", path, skipped)
    if not rows:
        raise DataError(f"{path}: empty file" if not skipped else f"{path}: no valid lines ({skipped} skipped)")
    return rows, skipped


def _encode_attr(values: List[Optional[str]]) -> Tuple[np.ndarray, pa.Array]:
    """Per lookup-table row: ``(int64 index into a dictionary of distinct values (-1 = missing), dictionary)``.

    The dictionary has each value once, so a column built from it is a well-formed dictionary array."""
    enc = pc.dictionary_encode(pa.array(values, pa.string()))
    idx = enc.indices.to_numpy(zero_copy_only=False)
    null = np.asarray(enc.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    return np.where(null, -1, np.nan_to_num(idx, nan=-1)).astype(np.int64), enc.dictionary


YEAR_RE = re.compile(r"\((\d{4})\)\s*$")


def _split_leave_last_out(user: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Rows sorted by user then time. Code 2 from the user's last positive on, 1 from the second-to-last."""
    n = len(user)
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    seg = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
    pos = (label > 0.5).astype(np.int64)
    cum = np.cumsum(pos)
    before = np.r_[0, cum][starts][seg]
    pre = cum - before                          # positives at or before this row, within the user
    total = np.add.reduceat(pos, starts)[seg]   # positives of the user
    codes = np.zeros(n, np.int8)
    ok = total >= 3
    codes[ok & (pre == total)] = 2
    codes[ok & (pre == total - 1)] = 1
    return codes


# ---------------------------------------------------------------------------------------- prepare
def prepare_movielens(source: str, out: os.PathLike, *, config=None, seed: int = 0, overwrite: bool = False,
                      skip_bad_rows: bool = False, **overrides) -> DatasetSchema:
    """Prepare MovieLens-1M from the ml-1m directory ``source`` into ``out``; returns the schema."""
    t0 = time.perf_counter()
    cfg = load_dataset_config(MovieLensConfig, config, overrides)
    inter_path, users_path, movies_path = _locate(source)
    inter = read_interactions(inter_path, skip_bad_rows)
    urows, u_skipped = _read_dat(users_path, "UserID::Gender::Age::Occupation::Zip-code", skip_bad_rows)
    mrows, m_skipped = _read_dat(movies_path, "MovieID::Title::Genres", skip_bad_rows)
    uid = np.array([int(r[0]) for r in urows], np.int64)
    mid = np.array([int(r[0]) for r in mrows], np.int64)
    has_ratings = inter.rating is not None
    if cfg.max_users is not None:
        first = inter.user[np.sort(np.unique(inter.user, return_index=True)[1])][: cfg.max_users]
        inter = inter.take(np.isin(inter.user, first))
    unknown = ~np.isin(inter.movie, mid)
    if unknown.any():
        if not skip_bad_rows:
            i = int(np.flatnonzero(unknown)[0])
            raise DataError(f"{inter_path}: {inter.where(inter.row[i])}: movie id {int(inter.movie[i])} is not in "
                            f"{movies_path} ({len(np.unique(inter.movie[unknown]))} unknown movie id(s)) {SKIP_HINT}")
        logger.warning("%s: skipped %d interaction(s) with a movie id not in %s", inter_path, int(unknown.sum()),
                       movies_path)
        inter = inter.take(~unknown)
        if len(inter.user) == 0:
            raise DataError(f"{inter_path}: no interaction left: every movie id is missing from {movies_path}")
    unknown_skipped = int(unknown.sum())
    skipped = {str(inter_path): inter.skipped + unknown_skipped, str(users_path): u_skipped,
               str(movies_path): m_skipped}
    user, movie = inter.user, inter.movie
    label = (inter.rating >= cfg.positive_threshold).astype(np.float32) if has_ratings \
        else np.ones(len(user), np.float32)
    # order: by user (users in first-appearance order), then timestamp / file order (stable)
    uniq, first_idx = np.unique(user, return_index=True)
    user_rank = np.empty(len(uniq), np.int64)
    user_rank[np.argsort(first_idx, kind="stable")] = np.arange(len(uniq))
    rank = user_rank[np.searchsorted(uniq, user)]
    order = np.lexsort((inter.ts, rank)) if has_ratings else np.argsort(rank, kind="stable")
    user, movie, label = user[order], movie[order], label[order]
    # history time: the timestamp, else the position in this (user, file) order
    hist_time = inter.ts[order] if inter.ts is not None else np.arange(len(user), dtype=np.int64)

    def lookup(ids: np.ndarray, table_ids: np.ndarray) -> np.ndarray:
        """Row of each id in the users / movies table (-1 when absent)."""
        size = int(max(ids.max(initial=0), table_ids.max(initial=0))) + 1
        pos = np.full(size, -1, np.int64)
        pos[table_ids] = np.arange(len(table_ids))
        return pos[ids]

    # static attributes: per users.dat / movies.dat row, an index into a dictionary of distinct values
    # (a dictionary with one entry per table row would repeat values: see Vocab._fit_dictionary)
    u_gender = _encode_attr([r[1] for r in urows])
    u_age = _encode_attr([r[2] for r in urows])
    u_occ = _encode_attr([r[3] for r in urows])
    u_zip = _encode_attr([r[4][: cfg.zip_prefix_digits] for r in urows])
    years = [YEAR_RE.search(r[1]) for r in mrows]
    m_year = _encode_attr([str(int(y.group(1)) // cfg.year_bucket_size * cfg.year_bucket_size) if y else None
                           for y in years])
    m_genres = pa.array([[g for g in r[2].split("|") if g] for r in mrows], pa.list_(pa.string()))
    m_first_genre = _encode_attr([next((g for g in r[2].split("|") if g), None) for r in mrows])

    # split codes of the labelled rows
    if cfg.split == "leave_last_out":
        codes = _split_leave_last_out(user, label)
        split_method = ("leave_last_out: per user the last positive (+ its negatives) -> test, the second-to-last "
                        "-> valid, the rest -> train; users with < 3 positives train only")
    else:
        rng_u = np.random.default_rng([seed, 1])
        uu = np.unique(user)
        r = rng_u.random(len(uu))
        ucode = np.where(r < cfg.test_frac, 2, np.where(r < cfg.test_frac + cfg.valid_frac, 1, 0)).astype(np.int8)
        codes = ucode[np.searchsorted(uu, user)]
        split_method = (f"user_holdout: seeded (seed {seed}) {cfg.valid_frac:g} of users -> valid, "
                        f"{cfg.test_frac:g} -> test, with all their rows")

    # negatives
    resampled = 0
    rng = np.random.default_rng([seed, 2])
    pos_idx = np.flatnonzero(label > 0.5)
    k = cfg.neg_ratio
    if k > 0 and len(pos_idx):
        catalog = np.unique(movie)
        kk = int(catalog.max()) + 1
        keys = pair_keys(user, movie, kk)
        full = users_with_every_item(keys, kk, len(catalog))
        if len(full):
            raise DataError(f"{inter_path}: user {int(full[0])} interacted with every movie of the catalogue "
                            f"({len(catalog)}): no negative can be sampled (set neg_ratio: 0)")
        # k negatives per positive, row-major (the negatives of positive 0 first)
        parent = np.repeat(pos_idx, k)
        if cfg.negatives_from == "split_positives":
            neg_movie = split_matched_negatives(
                np.random.default_rng([seed, 4]), user[parent], codes[parent], movie[pos_idx], codes[pos_idx], keys, kk,
                cfg.max_sampling_rounds, hint="; lower neg_ratio or set negatives_from: train_positives")
        else:
            neg_movie = sample_negatives(rng, catalog, user[parent], keys, kk, cfg.max_sampling_rounds,
                                         hint="; lower neg_ratio")
        if cfg.negatives_from == "train_positives":
            before = neg_movie
            neg_movie = resample_train_negatives(
                np.random.default_rng([seed, 3]), neg_movie, user[parent], codes[parent] == 0,
                np.unique(movie[(codes == 0) & (label > 0.5)]), keys, kk, cfg.max_sampling_rounds,
                hint="; lower neg_ratio or set negatives_from: catalog")
            resampled = int((neg_movie != before).sum())
    else:
        neg_movie, parent = np.zeros(0, np.int64), np.zeros(0, np.int64)
    n_lab = len(user)
    all_user = np.concatenate([user, user[parent]])
    all_movie = np.concatenate([movie, neg_movie])
    all_label = np.concatenate([label, np.zeros(len(parent), np.float32)])
    all_codes = np.concatenate([codes, codes[parent]])
    # row order: each labelled row followed by its sampled negatives
    sort_key = np.concatenate([np.arange(n_lab) * (k + 1), parent * (k + 1) + 1 + np.tile(np.arange(k), len(pos_idx))
                               if k > 0 else np.zeros(0, np.int64)])
    row_order = np.argsort(sort_key, kind="stable")

    upos = lookup(all_user, uid)
    mpos = lookup(all_movie, mid)

    # string features as dictionary arrays (indices into small dictionaries): fast to build and encode
    users_u, movies_u = np.unique(all_user), np.unique(all_movie)
    users_s, movies_s = pc.cast(pa.array(users_u), pa.string()), pc.cast(pa.array(movies_u), pa.string())
    uidx, midx = np.searchsorted(users_u, all_user), np.searchsorted(movies_u, all_movie)

    def dict_col(idx: np.ndarray, dictionary: pa.Array) -> pa.DictionaryArray:
        return pa.DictionaryArray.from_arrays(pa.array(idx.astype(np.int32), mask=idx < 0), dictionary)

    def attr_col(pos: np.ndarray, attr: Tuple[np.ndarray, pa.Array]) -> pa.DictionaryArray:
        """Attribute of table row ``pos`` (-1: id absent from the table -> null)."""
        idx, dictionary = attr
        return dict_col(np.where(pos >= 0, idx[np.maximum(pos, 0)], -1), dictionary)

    src_row = np.concatenate([np.arange(n_lab), parent])  # the labelled row whose history a row has

    def rows(sel: np.ndarray) -> pa.Table:
        ui, mi = upos[sel], mpos[sel]
        mi_arr = pa.array(mi, mask=mi < 0)
        hist = {HISTORY_ROW_COLUMN: pa.array(src_row[sel], pa.int64())} if cfg.history_len else {}
        return pa.table({**hist,
            "label": pa.array(all_label[sel], pa.float32()),
            "user_id": dict_col(uidx[sel], users_s),
            "movie_id": dict_col(midx[sel], movies_s),
            "gender": attr_col(ui, u_gender), "age": attr_col(ui, u_age), "occupation": attr_col(ui, u_occ),
            "zip_prefix": attr_col(ui, u_zip),
            "genres": m_genres.take(mi_arr), "year_bucket": attr_col(mi, m_year),
            USER_KEY_COLUMN: pa.array(all_user[sel], pa.int64()),
        })

    ordered_codes = all_codes[row_order]
    splits = {name: rows(row_order[ordered_codes == i]) for i, name in enumerate(SPLITS)}
    n_rows = len(row_order)

    train_pos = np.flatnonzero((codes == 0) & (label > 0.5))
    seq_users, seq_movies = user[train_pos], movie[train_pos]

    def write_sequences(w, vocabs) -> SequenceInfo:
        items = vocabs["movie_id"].encode(pc.cast(pa.array(seq_movies), pa.string()))
        starts = np.flatnonzero(np.r_[True, seq_users[1:] != seq_users[:-1]]) if len(seq_users) else np.zeros(0, np.int64)
        offsets = np.r_[starts, len(seq_users)].astype(np.int32)
        table = pa.table({"user": pa.array(seq_users[starts], pa.int64()),
                          "items": pa.ListArray.from_arrays(pa.array(offsets), pa.array(items, pa.int64()))})
        w.write_table("sequences.parquet", table)
        return SequenceInfo(file="sequences.parquet", item_feature="movie_id", num_items=vocabs["movie_id"].size - 1,
                            num_users=len(starts), order="timestamp" if has_ratings else "file")

    mc = cfg.min_count
    features = [FeatureSpec("user_id", ID, None, mc), FeatureSpec("movie_id", ID, None, mc),
                FeatureSpec("gender", STATIC, "user"), FeatureSpec("age", STATIC, "user"),
                FeatureSpec("occupation", STATIC, "user"), FeatureSpec("zip_prefix", STATIC, "user"),
                FeatureSpec("genres", STATIC, "movie", multi_hot=True), FeatureSpec("year_bucket", STATIC, "movie")]
    params = {"seed": seed, "interactions_file": str(inter_path), "users_file": str(users_path),
              "movies_file": str(movies_path), "has_ratings": has_ratings, "positives": int(len(pos_idx)),
              "sampled_negatives": int(len(parent)), "users": int(len(np.unique(user))),
              "negatives_from": cfg.negatives_from, "train_negatives_resampled": resampled,
              "item_feature": "movie_id", "skipped_rows": int(sum(skipped.values())),
              "skipped_rows_by_file": skipped, "config": to_dict(cfg)}
    history = None
    if cfg.history_len:
        lab = np.arange(n_lab)
        index = build_history_index(user, hist_time, (label > 0.5) & (codes != 2), cfg.history_len)
        side_attr = {"genres": m_first_genre, "year_bucket": m_year}
        values = {"movie_id": dict_col(midx[lab], movies_s),
                  **{f: attr_col(mpos[lab], side_attr[f]) for f in cfg.history_sides}}
        history = HistorySource(index, "movie_id", values, hist_time,
                                "seconds (ratings.dat timestamps)" if has_ratings else
                                "file order (no timestamps: gap = positions back in the user's log)",
                                notes={"sides": {"genres": "the first genre listed in movies.dat"}
                                       if "genres" in cfg.history_sides else {}})
    schema = write_prepared(out, overwrite=overwrite, dataset="movielens", splits=splits, label="label", dense=[],
                            features=features, user_key=USER_KEY_COLUMN, split_method=split_method,
                            source=str(source), params=params, extra=write_sequences, history=history)
    logger.info("movielens: %d rows prepared in %.2fs", n_rows, time.perf_counter() - t0)
    return schema
