"""MovieLens-1M as implicit-feedback CTR -> prepared parquet dataset (+ per-user item sequences).

``--source`` is the ml-1m directory; files are found in it or any subdirectory:

* interactions, first found of: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``: rating >= 4
  positive, < 4 an explicit negative, ordered by timestamp per user), ``ratings.parquet`` (columns
  ``userID``, ``movieID``: every pair positive, file order) or ``ratings_user_movie_pairs.tsv.gz``
  (``user<TAB>movie``, same);
* ``users.dat`` (``UserID::Gender::Age::Occupation::Zip-code``) and ``movies.dat``
  (``MovieID::Title::Genres``, latin-1).

Rows: every positive, plus ``neg_ratio`` (default 4) sampled negatives per positive: movies of the
catalogue (movies with at least one interaction) that the user never interacted with, uniform,
seeded, with replacement across a user's positives (vectorised rejection sampling). Sampled
negatives go to the split of their positive.

Features: ``user_id`` and ``movie_id`` (role ``id``; ``movie_id`` is the item feature), static group
``user``: gender, age, occupation, zip_prefix (first ``zip_prefix_digits`` characters); group
``movie``: genres (multi-hot ``list<int64>``), year_bucket (release year from the title, bucketed by
``year_bucket_size`` years). ``user_key`` = raw MovieLens user id (int64).

Split (``split``): ``leave_last_out`` (default): per user, the last positive (and its negatives) is
test, the second-to-last valid, the rest train; users with fewer than 3 positives are train only.
With ratings.dat, explicit negatives go with the positive they follow in time. ``user_holdout``:
a seeded ``valid_frac`` / ``test_frac`` of users with all their rows.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from store_rec.config import check
from store_rec.data.dsconfig import load_dataset_config
from store_rec.data.schema import ID, SPLITS, STATIC, DatasetSchema, SequenceInfo
from store_rec.data.tabular import FeatureSpec, write_prepared
from store_rec.errors import DataError, UserError

logger = logging.getLogger(__name__)

INTERACTION_FILES = ("ratings.dat", "ratings.parquet", "ratings_user_movie_pairs.tsv.gz")
USER_KEY_COLUMN = "user_key"


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

    def __post_init__(self) -> None:
        check(self.neg_ratio >= 0, "neg_ratio", "must be >= 0")
        check(0 <= self.valid_frac and 0 < self.test_frac and self.valid_frac + self.test_frac < 1,
              "test_frac", "need 0 <= valid_frac, 0 < test_frac, valid_frac + test_frac < 1")
        check(self.max_users is None or self.max_users >= 1, "max_users", "must be >= 1")
        check(1 <= self.zip_prefix_digits <= 5, "zip_prefix_digits", "must be in 1..5")
        check(self.year_bucket_size >= 1, "year_bucket_size", "must be >= 1")
        check(self.min_count >= 1, "min_count", "must be >= 1")
        check(self.max_sampling_rounds >= 1, "max_sampling_rounds", "must be >= 1")


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


def _as_int(col: pa.ChunkedArray, path: Path, name: str) -> np.ndarray:
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_integer(col.type):
        bad = np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    else:
        s = pc.cast(col, pa.string())
        bad = ~np.asarray(pc.fill_null(pc.match_substring_regex(s, r"^\s*\d+\s*$"), False)
                          .to_numpy(zero_copy_only=False), dtype=bool)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: row {i + 1}: column {name!r}: expected a positive integer id, got {col[i].as_py()!r}")
    return pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False)


def read_interactions(path: Path) -> Dict[str, np.ndarray]:
    """-> dict with ``user``, ``movie`` (int64) and, for ratings.dat, ``rating`` and ``ts``."""
    name = path.name
    try:
        if name.endswith(".parquet"):
            t = pq.read_table(path)
            cols = {c.lower(): c for c in t.column_names}
            for want in ("userid", "movieid"):
                if want not in cols:
                    raise DataError(f"{path}: missing column {want!r} (has {t.column_names})")
            return {"user": _as_int(t.column(cols["userid"]), path, cols["userid"]),
                    "movie": _as_int(t.column(cols["movieid"]), path, cols["movieid"])}
        if name.endswith(".tsv.gz") or name.endswith(".tsv"):
            t = pacsv.read_csv(path, read_options=pacsv.ReadOptions(column_names=["user", "movie"]),
                               parse_options=pacsv.ParseOptions(delimiter="\t"),
                               convert_options=pacsv.ConvertOptions(column_types={"user": pa.string(),
                                                                                  "movie": pa.string()}))
            return {"user": _as_int(t.column("user"), path, "user"),
                    "movie": _as_int(t.column("movie"), path, "movie")}
        # ratings.dat: "::" separated; reading with ':' gives empty fields between the values
        names = ["user", "e1", "movie", "e2", "rating", "e3", "ts"]
        t = pacsv.read_csv(path, read_options=pacsv.ReadOptions(column_names=names),
                           parse_options=pacsv.ParseOptions(delimiter=":", quote_char=False),
                           convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names}))
    except pa.ArrowInvalid as e:
        if "Empty CSV file" in str(e):
            raise DataError(f"{path}: empty file") from None
        raise DataError(f"{path}: cannot parse (expected UserID::MovieID::Rating::Timestamp): {e}") from None
    if t.num_rows == 0:
        raise DataError(f"{path}: empty file")
    return {"user": _as_int(t.column("user"), path, "UserID"), "movie": _as_int(t.column("movie"), path, "MovieID"),
            "rating": _as_int(t.column("rating"), path, "Rating").astype(np.float64),
            "ts": _as_int(t.column("ts"), path, "Timestamp")}


def _read_dat(path: Path, fields: int, encoding: str) -> List[List[str]]:
    rows = []
    with open(path, encoding=encoding) as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            parts = line.split("::")
            if len(parts) != fields:
                raise DataError(f"{path}: line {lineno}: expected {fields} '::'-separated fields, got {len(parts)}")
            rows.append(parts)
    if not rows:
        raise DataError(f"{path}: empty file")
    return rows


YEAR_RE = re.compile(r"\((\d{4})\)\s*$")


# ---------------------------------------------------------------------------------------- sampling
def sample_negatives(user: np.ndarray, interacted_keys: np.ndarray, catalog: np.ndarray, n_per_row: int,
                     rng: np.random.Generator, max_rounds: int) -> np.ndarray:
    """For each entry of ``user`` draw ``n_per_row`` movies of ``catalog`` not in the user's history.

    ``interacted_keys``: sorted unique ``user * K + movie`` keys (``K = catalog.max() + 1``) of every
    interaction. Returns ``int64[len(user) * n_per_row]`` (row-major: the negatives of entry 0 first).
    """
    k = int(catalog.max()) + 1
    users = np.repeat(user, n_per_row)
    out = catalog[rng.integers(0, len(catalog), size=len(users))]
    todo = np.arange(len(users))
    for _ in range(max_rounds):
        keys = users[todo] * k + out[todo]
        pos = np.searchsorted(interacted_keys, keys)
        hit = (pos < len(interacted_keys)) & (interacted_keys[np.minimum(pos, len(interacted_keys) - 1)] == keys)
        todo = todo[hit]
        if len(todo) == 0:
            return out
        out[todo] = catalog[rng.integers(0, len(catalog), size=len(todo))]
    raise DataError(f"negative sampling did not finish after {max_rounds} rounds: some users interacted with "
                    "(almost) every movie; lower neg_ratio")


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
    inter = read_interactions(inter_path)
    user, movie = inter["user"], inter["movie"]
    has_ratings = "rating" in inter
    if cfg.max_users is not None:
        first = user[np.sort(np.unique(user, return_index=True)[1])][: cfg.max_users]
        keep = np.isin(user, first)
        inter = {k: v[keep] for k, v in inter.items()}
        user, movie = inter["user"], inter["movie"]
    label = (inter["rating"] >= cfg.positive_threshold).astype(np.float32) if has_ratings \
        else np.ones(len(user), np.float32)
    # order: by user (users in first-appearance order), then timestamp / file order (stable)
    uniq, first_idx = np.unique(user, return_index=True)
    user_rank = np.empty(len(uniq), np.int64)
    user_rank[np.argsort(first_idx, kind="stable")] = np.arange(len(uniq))
    rank = user_rank[np.searchsorted(uniq, user)]
    order = np.lexsort((inter["ts"], rank)) if has_ratings else np.argsort(rank, kind="stable")
    user, movie, label = user[order], movie[order], label[order]

    # users.dat / movies.dat lookups
    urows = _read_dat(users_path, 5, "latin-1")
    mrows = _read_dat(movies_path, 3, "latin-1")
    uid = np.array([int(r[0]) for r in urows], np.int64)
    mid = np.array([int(r[0]) for r in mrows], np.int64)
    missing = np.setdiff1d(np.unique(movie), mid)
    if len(missing):
        raise DataError(f"{inter_path}: movie id {int(missing[0])} is not in {movies_path} "
                        f"({len(missing)} unknown movie id(s))")

    def lookup(ids: np.ndarray, table_ids: np.ndarray) -> np.ndarray:
        """Row of each id in the users / movies table (-1 when absent)."""
        size = int(max(ids.max(initial=0), table_ids.max(initial=0))) + 1
        pos = np.full(size, -1, np.int64)
        pos[table_ids] = np.arange(len(table_ids))
        return pos[ids]

    u_gender = pa.array([r[1] for r in urows])
    u_age = pa.array([r[2] for r in urows])
    u_occ = pa.array([r[3] for r in urows])
    u_zip = pa.array([r[4][: cfg.zip_prefix_digits] for r in urows])
    years = [YEAR_RE.search(r[1]) for r in mrows]
    m_year = pa.array([str(int(y.group(1)) // cfg.year_bucket_size * cfg.year_bucket_size) if y else None
                       for y in years], pa.string())
    m_genres = pa.array([[g for g in r[2].split("|") if g] for r in mrows], pa.list_(pa.string()))

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
    rng = np.random.default_rng([seed, 2])
    pos_idx = np.flatnonzero(label > 0.5)
    k = cfg.neg_ratio
    if k > 0 and len(pos_idx):
        catalog = np.unique(movie)
        kk = int(catalog.max()) + 1
        keys = np.unique(user * kk + movie)
        hist_users, hist_len = np.unique(keys // kk, return_counts=True)
        full = hist_users[hist_len >= len(catalog)]
        if len(full):
            raise DataError(f"{inter_path}: user {int(full[0])} interacted with every movie of the catalogue "
                            f"({len(catalog)}): no negative can be sampled (set neg_ratio: 0)")
        neg_movie = sample_negatives(user[pos_idx], keys, catalog, k, rng, cfg.max_sampling_rounds)
        parent = np.repeat(pos_idx, k)
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

    def rows(sel: np.ndarray) -> pa.Table:
        ui, mi = upos[sel], mpos[sel]
        mi_arr = pa.array(mi, mask=mi < 0)
        return pa.table({
            "label": pa.array(all_label[sel], pa.float32()),
            "user_id": dict_col(uidx[sel], users_s),
            "movie_id": dict_col(midx[sel], movies_s),
            "gender": dict_col(ui, u_gender), "age": dict_col(ui, u_age), "occupation": dict_col(ui, u_occ),
            "zip_prefix": dict_col(ui, u_zip),
            "genres": m_genres.take(mi_arr), "year_bucket": dict_col(mi, m_year),
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
              "item_feature": "movie_id", "skipped_rows": 0, "config": dataclasses.asdict(cfg)}
    schema = write_prepared(out, overwrite=overwrite, dataset="movielens", splits=splits, label="label", dense=[],
                            features=features, user_key=USER_KEY_COLUMN, split_method=split_method,
                            source=str(source), params=params, extra=write_sequences)
    logger.info("movielens: %d rows prepared in %.2fs", n_rows, time.perf_counter() - t0)
    return schema
