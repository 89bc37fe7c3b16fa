"""Prepare the real samples in ../shared/datasets and check the results against hand counts.

Expected numbers are computed here independently with the csv / gzip modules and plain Python.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from store_rec.data.prepare import prepare
from store_rec.data.schema import SPLITS, DatasetSchema
from store_rec.data.vocab import Vocab, load_vocab

AVAZU_COLS = ("id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,"
              "device_id,device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21").split(",")


def _read_split(d: Path, split: str) -> pa.Table:
    schema = DatasetSchema.load(d)
    return pa.concat_tables([pq.read_table(d / f) for f in schema.splits[split].files])


def _avazu_rows(paths):
    rows = []
    for p in paths:
        opener = gzip.open if p.name.endswith(".gz") else open
        with opener(p, "rt", newline="") as f:
            for r in csv.reader(f):
                if r[0] == "id":
                    continue
                rows.append(dict(zip(AVAZU_COLS, r)))
    return rows


# ------------------------------------------------------------------------------------------- vocab
def test_vocab_order_min_count_and_oov():
    v = Vocab.fit(pa.array(["b", "a", "c", "a", "b", "d", None, "a"]), min_count=2)
    assert v.values.to_pylist() == ["a", "b"]  # a:3, b:2 (c, d below min_count; null ignored)
    assert v.size == 3
    assert v.encode(pa.array(["a", "b", "c", None, "zzz"])).tolist() == [1, 2, 0, 0, 0]
    tie = Vocab.fit(pa.array(["y", "x", "z", "x", "y"]))  # x:2, y:2 tie -> by value; z:1
    assert tie.values.to_pylist() == ["x", "y", "z"]
    lists = tie.encode_lists(pa.array([["x", "q"], [], ["z"]]).slice(1))
    assert lists.to_pylist() == [[], [3]]
    # dictionary-encoded input (how the CSV readers load categoricals) gives the same vocab and ids
    raw = pa.array(["b", "a", "c", "a", "b", "d", None, "a"])
    dv = Vocab.fit(raw.dictionary_encode(), min_count=2)
    assert dv.values.to_pylist() == ["a", "b"]
    probe = pa.array(["a", None, "d", "b"])
    assert dv.encode(probe.dictionary_encode()).tolist() == v.encode(probe).tolist() == [1, 0, 0, 2]


def test_vocab_dictionary_with_repeated_values():
    # Arrow allows a dictionary to repeat values (e.g. one entry per row of a lookup table): a value
    # must still get one id, counted over all its slots
    dictionary = pa.array(["a", "b", "a", "c", "b", None, "a"])
    idx = pa.array([0, 2, 1, 4, 3, 0, None, 2, 5, 6, 6], pa.int32())
    arr = pa.DictionaryArray.from_arrays(idx, dictionary)  # a a b b c a null a null a a
    v = Vocab.fit(arr)
    assert v.values.to_pylist() == ["a", "b", "c"] and v.counts.tolist() == [6, 2, 1] and v.size == 4
    plain = Vocab.fit(pa.array(["a", "a", "b", "b", "c", "a", None, "a", None, "a", "a"]))
    assert plain.values.to_pylist() == v.values.to_pylist() and plain.counts.tolist() == v.counts.tolist()
    assert v.encode(arr).tolist() == [1, 1, 2, 2, 3, 1, 0, 1, 0, 1, 1]
    assert Vocab.fit(arr, min_count=2).values.to_pylist() == ["a", "b"]
    # chunks with different dictionaries (what concatenating per-file reads gives)
    chunked = pa.chunked_array([pa.array(["x", "y", "x"]).dictionary_encode(),
                                pa.array(["y", "z", "y"]).dictionary_encode()])
    cv = Vocab.fit(chunked)
    assert cv.values.to_pylist() == ["y", "x", "z"] and cv.counts.tolist() == [3, 2, 1]
    assert cv.encode(chunked).tolist() == [2, 1, 2, 1, 3, 1]


# ------------------------------------------------------------------------------------------- avazu
@pytest.fixture(scope="module")
def avazu_lapis(shared_datasets, tmp_path_factory):
    src = shared_datasets / "avazu" / "lapis-hong_wide-resdnn"
    out = tmp_path_factory.mktemp("avazu") / "lapis"
    schema = prepare("avazu", str(src), out, seed=3, resplit=True)  # train/dev/test files: re-split on purpose
    return src, out, schema


def test_avazu_lapis_counts_vocab_and_encoding(avazu_lapis):
    src, out, schema = avazu_lapis
    files = sorted(src.iterdir(), key=lambda p: p.name)  # dev.csv, test.csv, train.csv.gz
    rows = _avazu_rows(files)
    assert len(rows) == 8999
    assert sum(r["click"] == "1" for r in rows) == 1397 + 166
    assert sum(s.rows for s in schema.splits.values()) == 8999
    assert sum(s.positives for s in schema.splits.values()) == 1563
    assert schema.split_method.startswith("random")
    # documented rule: u = default_rng(seed).random(n) over rows in file order; < .8 train, < .9 valid
    u = np.random.default_rng(3).random(len(rows))
    code = np.where(u < 0.8, 0, np.where(u < 0.9, 1, 2))
    for i, split in enumerate(SPLITS):
        sel = [r for r, c in zip(rows, code) if c == i]
        t = _read_split(out, split)
        assert t.num_rows == len(sel) == schema.splits[split].rows
        assert t.column("label").to_pylist() == [float(r["click"]) for r in sel]
        assert schema.splits[split].positives == sum(r["click"] == "1" for r in sel)
    train = [r for r, c in zip(rows, code) if c == 0]
    for feat in ("site_id", "device_ip", "C14", "banner_pos"):
        counts = Counter(r[feat] for r in train)
        kept = sorted((v for v in counts if counts[v] >= 2), key=lambda v: (-counts[v], v))
        f = schema.feature(feat)
        assert f.vocab_size == len(kept) + 1
        vocab = load_vocab(out, feat)
        assert vocab.values.to_pylist() == kept
        # every split uses the train vocabulary: ids decode to the raw value, or 0 where not in it
        for i, split in enumerate(SPLITS):
            ids = _read_split(out, split).column(feat).to_pylist()
            raw = [r[feat] for r, c in zip(rows, code) if c == i]
            assert ids == [kept.index(v) + 1 if v in kept else 0 for v in raw]
    hours = _read_split(out, "test").column("hour_of_day").to_pylist()
    assert set(hours) == {1} and load_vocab(out, "hour_of_day").values.to_pylist() == ["0"]  # 14102100 -> 00h
    assert load_vocab(out, "weekday").values.to_pylist() == ["1"]  # 2014-10-21 was a Tuesday (Mon = 0)


def test_avazu_schema_roles_groups_user_key(avazu_lapis):
    src, out, schema = avazu_lapis
    assert schema.label == "label" and schema.dense == []
    assert [f.name for f in schema.features_with_role("id")] == [
        "site_id", "site_domain", "app_id", "app_domain", "device_id", "device_ip", "device_model", "C14", "C17"]
    assert schema.groups == {"site": ["site_category"], "app": ["app_category"],
                             "device": ["device_type", "device_conn_type"],
                             "ad": ["C1", "banner_pos", "C15", "C16", "C18", "C19", "C20", "C21"],
                             "context": ["hour_of_day", "weekday"]}
    assert schema.user_key == "user_key"
    rows = _avazu_rows(sorted(src.iterdir(), key=lambda p: p.name))
    keys = np.concatenate([_read_split(out, s).column("user_key").to_numpy() for s in SPLITS])
    assert len(np.unique(keys)) == len({r["device_ip"] for r in rows})
    reloaded = DatasetSchema.load(out)
    assert reloaded.to_dict() == schema.to_dict()
    t = _read_split(out, "train")
    assert t.schema.field("label").type == pa.float32() and t.schema.field("site_id").type == pa.int64()


def test_avazu_deepctr_sample_and_determinism(shared_datasets, tmp_path):
    src = shared_datasets / "avazu" / "deepctr" / "avazu_sample.txt"
    a = prepare("avazu", str(src), tmp_path / "a", seed=7, min_count=1)
    prepare("avazu", str(src), tmp_path / "b", seed=7, min_count=1)
    c = prepare("avazu", str(src), tmp_path / "c", seed=8, min_count=1)
    rows = _avazu_rows([src])
    assert sum(s.rows for s in a.splits.values()) == len(rows) == 100
    assert sum(s.positives for s in a.splits.values()) == sum(r["click"] == "1" for r in rows)
    assert a.feature("device_model").vocab_size == len({r["device_model"] for r, u in zip(
        rows, np.random.default_rng(7).random(100)) if u < 0.8}) + 1
    for s in SPLITS:
        assert (tmp_path / "a" / s / "part-00000.parquet").read_bytes() == \
            (tmp_path / "b" / s / "part-00000.parquet").read_bytes()
    assert [c.splits[s].rows for s in SPLITS] != [a.splits[s].rows for s in SPLITS] or \
        not _read_split(tmp_path / "a", "train").equals(_read_split(tmp_path / "c", "train"))


def test_avazu_time_split_when_several_hours(tmp_path):
    header = ",".join(AVAZU_COLS)
    lines = [header]
    for i in range(40):
        hour = 14102100 + i // 10  # 4 hours x 10 rows
        lines.append(f"{i},{i % 2},{hour},1005,0,s{i % 3},d,c,a,ad,ac,di,ip{i % 5},m,1,0,1,2,3,4,5,6,7,8")
    (tmp_path / "x.csv").write_text("\n".join(lines) + "\n")
    s = prepare("avazu", str(tmp_path / "x.csv"), tmp_path / "out", min_count=1)
    assert s.split_method.startswith("time")
    # hour midpoints at .125 .375 .625 .875 of rows -> train train train valid; last hour forced to test,
    # then the last train hour becomes valid
    assert [s.splits[k].rows for k in SPLITS] == [20, 10, 10]
    assert load_vocab(tmp_path / "out", "hour_of_day").values.to_pylist() == ["0", "1"]
    assert _read_split(tmp_path / "out", "test").column("hour_of_day").to_pylist() == [0] * 10  # hour 3 unseen
    # direct disjointness: device_ip (the user key) is unique per row, so user_key = file row + 1
    lines = [header] + [line.replace(f",ip{i % 5},", f",ip{i},") for i, line in enumerate(lines[1:])]
    (tmp_path / "u.csv").write_text("\n".join(lines) + "\n")
    for split, want in (("time", [set(range(1, 21)), set(range(21, 31)), set(range(31, 41))]),
                        ("random", [set(np.flatnonzero(np.random.default_rng(4).random(40) < 0.8) + 1)])):
        prepare("avazu", str(tmp_path / "u.csv"), tmp_path / split, min_count=1, split=split, seed=4)
        keys = [_read_split(tmp_path / split, sp).column("user_key").to_pylist() for sp in SPLITS]
        assert sum(len(k) for k in keys) == len(set().union(*keys)) == 40  # no row in two splits
        assert set().union(*keys) == set(range(1, 41))
        for got, exp in zip(keys, want):
            assert set(got) == exp


# ------------------------------------------------------------------------------------------- criteo
def _criteo_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_criteo_sample_vocab_mode(shared_datasets, tmp_path):
    src = shared_datasets / "criteo" / "deepctr" / "criteo_sample.txt"
    rows = _criteo_rows(src)
    s = prepare("criteo", str(src), tmp_path / "c", seed=0, min_count=1)
    assert sum(x.rows for x in s.splits.values()) == len(rows) == 200
    assert sum(x.positives for x in s.splits.values()) == 49
    assert s.dense == [f"I{i}" for i in range(1, 14)]
    assert len(s.sparse) == 26 and s.user_key is None
    assert {f.name for f in s.features_with_role("id")} == {"C3", "C4", "C7", "C10", "C12", "C15", "C16", "C21",
                                                             "C24", "C26"}
    assert set(s.groups) == {"medium", "low"}
    code = np.random.default_rng(0).random(200)
    train = [r for r, u in zip(rows, code) if u < 0.8]
    t = _read_split(tmp_path / "c", "train")
    assert t.num_rows == len(train)
    for col in ("I2", "I3", "I5"):
        want = [math.log1p(max(float(r[col]), 0.0)) if r[col] else 0.0 for r in train]
        np.testing.assert_allclose(t.column(col).to_numpy(), want, rtol=1e-6)
    for col in ("C3", "C9", "C26"):
        vals = {r[col] for r in train if r[col]}
        assert s.feature(col).vocab_size == len(vals) + 1


def test_criteo_default_min_count_and_hash_mode(shared_datasets, tmp_path):
    src = shared_datasets / "criteo" / "deepctr" / "criteo_sample.txt"
    rows = _criteo_rows(src)
    code = np.random.default_rng(0).random(200)
    train = [r for r, u in zip(rows, code) if u < 0.8]
    s = prepare("criteo", str(src), tmp_path / "v")  # min_count 10
    for col in ("C6", "C9", "C14"):
        cnt = Counter(r[col] for r in train if r[col])
        assert s.feature(col).vocab_size == 1 + sum(1 for v in cnt.values() if v >= 10)
    h = prepare("criteo", str(src), tmp_path / "h", categorical="hash", hash_buckets=1000,
                hash_buckets_per_feature={"C1": 7})
    assert h.feature("C3").vocab_size == 1000 and h.feature("C3").vocab_file is None
    assert h.feature("C1").vocab_size == 7  # static, but named in hash_buckets_per_feature
    t = _read_split(tmp_path / "h", "train")
    assert t.column("C3").to_pylist() == [int(r["C3"] or "0", 16) % 1000 for r in train]
    assert t.column("C1").to_pylist() == [int(r["C1"] or "0", 16) % 7 for r in train]
    # hash mode hashes the id features; static features keep a (small, exact) train vocabulary
    ids = {f.name for f in h.features_with_role("id")}
    for f in h.sparse:
        assert (f.vocab_file is None) == (f.name in ids or f.name == "C1"), f.name
    assert sorted(p.stem for p in (tmp_path / "h" / "vocab").iterdir()) == sorted(
        f.name for f in h.features_with_role("static") if f.name != "C1")
    for col in ("C6", "C9", "C14"):
        cnt = Counter(r[col] for r in train if r[col])
        assert h.feature(col).vocab_size == s.feature(col).vocab_size == 1 + sum(1 for v in cnt.values() if v >= 10)
        assert t.column(col).to_pylist() == _read_split(tmp_path / "v", "train").column(col).to_pylist()
    # static_hash_buckets: static features hashed too, into their own (small) bucket count
    hs = prepare("criteo", str(src), tmp_path / "hs", categorical="hash", hash_buckets=1000, static_hash_buckets=50)
    assert {f.vocab_size for f in hs.features_with_role("id")} == {1000}
    assert {f.vocab_size for f in hs.features_with_role("static")} == {50}
    t = _read_split(tmp_path / "hs", "train")
    assert t.column("C9").to_pylist() == [int(r["C9"] or "0", 16) % 50 for r in train]
    assert not (tmp_path / "hs" / "vocab").exists()
    from store_rec.config import ConfigError

    with pytest.raises(ConfigError, match="static_hash_buckets: must be >= 1"):
        prepare("criteo", str(src), tmp_path / "bad", categorical="hash", static_hash_buckets=0)


def test_criteo_tsv_headerless_and_sequential_split(tmp_path):
    lines = []
    for i in range(20):
        dense = [str(i - 2), ""] + [str(j) for j in range(11)]
        cats = [format(i * 7 + j, "08x") for j in range(26)]
        cats[3] = ""
        lines.append("\t".join([str(i % 2), *dense, *cats]))
    (tmp_path / "day_1").write_text("\n".join(lines[10:]) + "\n")
    (tmp_path / "day_0").write_text("\n".join(lines[:10]) + "\n")
    d = tmp_path / "days"
    d.mkdir()
    for n in ("day_0", "day_1"):
        (tmp_path / n).rename(d / n)
    s = prepare("criteo", str(d), tmp_path / "out", split="sequential", min_count=1)
    assert [s.splits[k].rows for k in SPLITS] == [16, 2, 2]
    t = _read_split(tmp_path / "out", "train")
    np.testing.assert_allclose(t.column("I1").to_numpy(), [math.log1p(max(i - 2, 0)) for i in range(16)], rtol=1e-6)
    assert t.column("I2").to_pylist() == [0.0] * 16
    assert t.column("C4").to_pylist() == [0] * 16  # always missing -> OOV
    test = _read_split(tmp_path / "out", "test")
    assert test.column("C1").to_pylist() == [0, 0]  # unseen in train -> OOV


def test_criteo_splits_are_disjoint(tmp_path):
    # I1 = row number (unique per row, log1p is injective) identifies each row in every split
    lines = ["\t".join([str(i % 2), str(i)] + ["1"] * 12 + [format(i % 5, "08x")] * 26) for i in range(50)]
    (tmp_path / "day_0").write_text("\n".join(lines) + "\n")
    for split in ("random", "sequential"):
        s = prepare("criteo", str(tmp_path / "day_0"), tmp_path / split, split=split, seed=2, min_count=1)
        rows = [np.rint(np.expm1(_read_split(tmp_path / split, sp).column("I1").to_numpy())).astype(int).tolist()
                for sp in SPLITS]
        assert sum(len(r) for r in rows) == len(set().union(*rows)) == 50  # no row in two splits
        assert set().union(*rows) == set(range(50))
        assert [len(r) for r in rows] == [s.splits[sp].rows for sp in SPLITS]
        if split == "sequential":
            assert rows == [list(range(40)), list(range(40, 45)), list(range(45, 50))]
        else:
            u = np.random.default_rng(2).random(50)
            assert rows[0] == np.flatnonzero(u < 0.8).tolist()
            assert rows[1] == np.flatnonzero((u >= 0.8) & (u < 0.9)).tolist()


# ------------------------------------------------------------------------------------------- movielens
def _ml_pairs(root: Path, max_users: int):
    users, pairs = [], []
    with gzip.open(root / "aurasparktraining" / "ratings_user_movie_pairs.tsv.gz", "rt") as f:
        for line in f:
            u, m = line.split()
            if u not in users:
                if len(users) == max_users:
                    break
                users.append(u)
            pairs.append((int(u), int(m)))
    return users, pairs


@pytest.fixture(scope="module")
def ml300(shared_datasets, tmp_path_factory):
    out = tmp_path_factory.mktemp("ml") / "ml300"
    return shared_datasets / "ml-1m", out, prepare("movielens", str(shared_datasets / "ml-1m"), out, max_users=300)


def test_movielens_rows_splits_and_negatives(ml300):
    root, out, s = ml300
    users, pairs = _ml_pairs(root, 300)
    npos = len(pairs)
    assert sum(x.positives for x in s.splits.values()) == npos
    assert sum(x.rows for x in s.splits.values()) == npos * 5  # neg_ratio 4
    assert s.splits["test"].rows == s.splits["valid"].rows == 300 * 5
    assert s.params["has_ratings"] is False and s.params["users"] == 300
    uv, mv = load_vocab(out, "user_id"), load_vocab(out, "movie_id")
    hist = {}
    for u, m in pairs:
        hist.setdefault(u, []).append(m)
    test = _read_split(out, "test")
    tu = [int(x) for x in uv.decode(test.column("user_id").to_numpy())]
    tm = mv.decode(test.column("movie_id").to_numpy())
    lab = test.column("label").to_pylist()
    assert tu == test.column("user_key").to_pylist()
    known = set(mv.values.to_pylist())

    def expect(movie: int):  # raw id when in the train vocabulary, else OOV (decodes to None)
        return str(movie) if str(movie) in known else None

    for u, m, y in zip(tu, tm, lab):
        if y == 1.0:
            assert m == expect(hist[u][-1])  # leave-last-out: the last positive in file order
        elif m is not None:
            assert int(m) not in hist[u]  # sampled negatives are never interacted movies
    assert sum(lab) == 300
    valid = _read_split(out, "valid")
    vpos = [(int(uv.decode([a])[0]), mv.decode([b])[0]) for a, b, y in zip(
        valid.column("user_id").to_numpy(), valid.column("movie_id").to_numpy(), valid.column("label").to_pylist())
        if y == 1.0]
    assert sorted(vpos, key=str) == sorted(((u, expect(h[-2])) for u, h in hist.items()), key=str)
    # users with their rows in the schema's order; roles and groups
    assert [f.name for f in s.features_with_role("id")] == ["user_id", "movie_id"]
    assert s.groups == {"user": ["gender", "age", "occupation", "zip_prefix"], "movie": ["genres", "year_bucket"]}
    assert s.user_key == "user_key" and s.feature("genres").multi_hot and s.feature("genres").max_len == 6


def _ml_users_movies(root: Path, zip_digits: int = 2, year_bucket: int = 5):
    """users.dat -> {user: {gender, age, occupation, zip_prefix}}, movies.dat -> {movie: year bucket}."""
    users, movies = {}, {}
    with open(root / "grouplens" / "users.dat", encoding="latin-1") as f:
        for line in f:
            u, g, a, o, z = line.rstrip("\n").split("::")
            users[int(u)] = {"gender": g, "age": a, "occupation": o, "zip_prefix": z[:zip_digits]}
    with open(root / "grouplens" / "movies.dat", encoding="latin-1") as f:
        for line in f:
            m, title, _ = line.rstrip("\n").split("::")
            movies[int(m)] = str(int(title.rstrip()[-5:-1]) // year_bucket * year_bucket)
    return users, movies


def _check_static_vocabs(out: Path, s: DatasetSchema, root: Path) -> dict:
    """Every static vocab holds each train value once, ids are contiguous and decode to the raw value
    of the row's user / movie. Returns {feature: vocab_size}."""
    users, movies = _ml_users_movies(root)
    mv = load_vocab(out, "movie_id")
    sizes = {}
    train = _read_split(out, "train")
    train_users = train.column("user_key").to_numpy()
    train_movies = np.array([int(m) for m in mv.decode(train.column("movie_id").to_numpy())])
    for name in ("gender", "age", "occupation", "zip_prefix", "year_bucket"):
        v = load_vocab(out, name)
        raw_vals = v.values.to_pylist()
        assert len(raw_vals) == len(set(raw_vals)), name  # one id per value
        if name == "year_bucket":
            want = [movies[m] for m in np.unique(train_movies)]
            raw_of_row = np.array([movies[m] for m in train_movies])
        else:
            want = [users[u][name] for u in np.unique(train_users)]
            raw_of_row = np.array([users[u][name] for u in train_users])
        assert sorted(raw_vals) == sorted(set(want)), name
        assert s.feature(name).vocab_size == len(set(want)) + 1
        ids = train.column(name).to_numpy()
        assert np.array_equal(np.unique(ids), np.arange(1, s.feature(name).vocab_size)), name  # contiguous, no OOV
        assert np.array_equal(np.asarray(raw_vals, dtype=object)[ids - 1], raw_of_row), name
        for sp in ("valid", "test"):
            other = _read_split(out, sp).column(name).to_numpy()
            assert other.min() >= 0 and other.max() < s.feature(name).vocab_size, (name, sp)
        sizes[name] = s.feature(name).vocab_size
    return sizes


def test_movielens_static_vocabularies(ml300):
    root, out, s = ml300
    users, _ = _ml_users_movies(root)
    sel = [int(u) for u in _ml_pairs(root, 300)[0]]
    sizes = _check_static_vocabs(out, s, root)
    assert sizes["gender"] == 3 and sizes["age"] == 8  # F/M; 7 age codes, all present among 300 users
    assert sizes["occupation"] == 1 + len({users[u]["occupation"] for u in sel}) == 22
    assert sizes["zip_prefix"] == 1 + len({users[u]["zip_prefix"] for u in sel})
    assert s.feature("user_id").vocab_size == 301


def test_movielens_leave_last_out_splits_are_disjoint(ml300):
    root, out, s = ml300
    users, pairs = _ml_pairs(root, 300)
    mv = load_vocab(out, "movie_id")
    known = set(mv.values.to_pylist())
    per_split = {}
    for sp in SPLITS:
        t = _read_split(out, sp)
        pos = np.asarray(t.column("label").to_numpy()) == 1.0
        u = t.column("user_key").to_numpy()[pos]
        m = mv.decode(t.column("movie_id").to_numpy()[pos])
        per_split[sp] = Counter(zip(u.tolist(), m))
    train, valid, test = (per_split[sp] for sp in SPLITS)
    assert max(train.values()) == 1  # ML pairs are unique, so is every positive (user, movie) in train
    assert not (set(train) & set(valid)) and not (set(train) & set(test))
    assert not ({k for k in valid if k[1] is not None} & {k for k in test if k[1] is not None})
    # together the splits hold each interaction exactly once (movies outside train's vocab decode to None)
    assert train + valid + test == Counter((u, str(m) if str(m) in known else None) for u, m in pairs)
    assert sum(valid.values()) == sum(test.values()) == 300 and sum(train.values()) == len(pairs) - 600


def test_movielens_genres_multi_hot_and_sequences(ml300):
    root, out, s = ml300
    gv, mv = load_vocab(out, "genres"), load_vocab(out, "movie_id")
    train = _read_split(out, "train")
    assert train.schema.field("genres").type == pa.list_(pa.int64())
    movies = mv.decode(train.column("movie_id").to_numpy())
    genres = train.column("genres").to_pylist()
    years = load_vocab(out, "year_bucket").decode(train.column("year_bucket").to_numpy())
    i = movies.index("1")  # Toy Story (1995): Animation|Children's|Comedy
    assert sorted(gv.decode(genres[i])) == ["Animation", "Children's", "Comedy"] and years[i] == "1995"
    j = movies.index("2")  # Jumanji (1995): Adventure|Children's|Fantasy
    assert sorted(gv.decode(genres[j])) == ["Adventure", "Children's", "Fantasy"]
    with open(root / "grouplens" / "movies.dat", encoding="latin-1") as f:
        counts = Counter(g for line in f for g in line.rstrip("\n").split("::")[2].split("|"))
    assert s.feature("genres").vocab_size == 1 + 18 and len(counts) == 18
    users, pairs = _ml_pairs(root, 300)
    seq = pq.read_table(out / "sequences.parquet")
    assert s.sequences.num_users == seq.num_rows == 300 and s.sequences.item_feature == "movie_id"
    first = seq.slice(0, 1).to_pylist()[0]
    assert first["user"] == int(users[0])
    want = [m for u, m in pairs if u == int(users[0])][:-2]
    assert [int(x) for x in mv.decode(first["items"])] == want


def test_movielens_determinism_and_user_holdout(shared_datasets, tmp_path):
    src = str(shared_datasets / "ml-1m")
    a = prepare("movielens", src, tmp_path / "a", max_users=40, neg_ratio=2, seed=5)
    prepare("movielens", src, tmp_path / "b", max_users=40, neg_ratio=2, seed=5)
    for sp in SPLITS:
        assert _read_split(tmp_path / "a", sp).equals(_read_split(tmp_path / "b", sp))
    prepare("movielens", src, tmp_path / "c", max_users=40, neg_ratio=2, seed=6)
    assert not _read_split(tmp_path / "a", "train").equals(_read_split(tmp_path / "c", "train"))
    h = prepare("movielens", src, tmp_path / "h", max_users=40, split="user_holdout", seed=1)
    seen = [set(_read_split(tmp_path / "h", sp).column("user_key").to_pylist()) for sp in SPLITS]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert len(seen[0] | seen[1] | seen[2]) == 40
    assert sum(x.rows for x in h.splits.values()) == sum(x.rows for x in a.splits.values()) // 3 * 5


def test_movielens_ratings_dat(shared_datasets, tmp_path):
    root = tmp_path / "ml"
    root.mkdir()
    for n in ("users.dat", "movies.dat"):
        (root / n).write_bytes((shared_datasets / "ml-1m" / "grouplens" / n).read_bytes())
    # user 1: 4 ratings out of time order; user 2: 3 positives + 1 negative; user 3 puts movies
    # 1..8 into the train vocabulary (its last two positives by time are 9 and 10)
    u3 = "".join(f"3::{m}::5::{t}\n" for t, m in enumerate([4, 7, 8, 1, 2, 3, 5, 6, 9, 10]))
    u4 = "4::11::5::1\n4::12::5::2\n4::13::5::3\n"
    (root / "ratings.dat").write_text("1::1::5::30\n1::2::3::10\n1::3::4::20\n1::4::5::40\n"
                                      "2::5::4::1\n2::6::2::2\n2::7::5::3\n2::8::4::4\n" + u3 + u4)
    s = prepare("movielens", str(root), tmp_path / "out", neg_ratio=1)
    assert s.params["has_ratings"] is True and s.sequences.order == "timestamp"
    mv = load_vocab(tmp_path / "out", "movie_id")
    got = {sp: [(int(u), m, y) for u, m, y in zip(
        _read_split(tmp_path / "out", sp).column("user_key").to_pylist(),
        mv.decode(_read_split(tmp_path / "out", sp).column("movie_id").to_numpy()),
        _read_split(tmp_path / "out", sp).column("label").to_pylist())
        if u in (1, 2) and (y == 1.0 or (u, m) in {(1, "2"), (2, "6")})]
        for sp in SPLITS}
    # user 1 by time: 2(-) 3(+) 1(+) 4(+); user 2: 5(+) 6(-) 7(+) 8(+)
    assert got["test"] == [(1, "4", 1.0), (2, "8", 1.0)]
    assert got["valid"] == [(1, "1", 1.0), (2, "7", 1.0)]
    assert got["train"] == [(1, "2", 0.0), (1, "3", 1.0), (2, "5", 1.0), (2, "6", 0.0)]
    seq = pq.read_table(tmp_path / "out" / "sequences.parquet").to_pylist()
    assert [(r["user"], mv.decode(r["items"])) for r in seq] == [
        (1, ["3"]), (2, ["5"]), (3, ["4", "7", "8", "1", "2", "3", "5", "6"]), (4, ["11"])]


def test_cli_prepare_and_info_synthetic_dispatch(capsys, tmp_path, shared_datasets):
    from store_rec.cli import main

    assert main(["data", "prepare", "synthetic", "--out", str(tmp_path / "syn"), "--rows", "2000",
                 "--items", "50", "--seed", "1"]) == 0
    s = DatasetSchema.load(tmp_path / "syn")
    assert s.dataset == "synthetic" and sum(x.rows for x in s.splits.values()) == 2000
    assert s.feature("item_id").vocab_size == 51
    src = shared_datasets / "criteo" / "deepctr" / "criteo_sample.txt"
    assert main(["data", "prepare", "criteo", "--source", str(src), "--out", str(tmp_path / "c"),
                 "--set", "min_count=1"]) == 0
    printed = capsys.readouterr().out
    assert "total:        200 rows" in printed and "label rate" in printed
    assert main(["data", "info", str(tmp_path / "c")]) == 0
    assert "static group low:" in capsys.readouterr().out


def test_movielens_full_file_row_count(shared_datasets, tmp_path):
    s = prepare("movielens", str(shared_datasets / "ml-1m"), tmp_path / "full", neg_ratio=1)
    assert sum(x.positives for x in s.splits.values()) == 1_000_209
    assert sum(x.rows for x in s.splits.values()) == 2 * 1_000_209
    assert s.splits["test"].positives == s.splits["valid"].positives == 6040
    assert s.feature("user_id").vocab_size == 6041 and s.sequences.num_users == 6040
    assert s.params["interactions_file"].endswith("ratings.parquet") and s.params["skipped_rows"] == 0
    # static vocabularies: one id per distinct value (they used to get one per user / movie row)
    sizes = _check_static_vocabs(tmp_path / "full", s, shared_datasets / "ml-1m")
    assert sizes == {"gender": 3, "age": 8, "occupation": 22, "zip_prefix": 101, "year_bucket": 19}
    # 3,706 movies have an interaction; one has positives only in valid / test: train negatives are no longer
    # drawn from it (negatives_from: train_positives), so it is not in train and not in the vocabulary
    assert s.feature("genres").vocab_size == 19 and s.feature("movie_id").vocab_size == 3706
    # direct disjointness: positive (user, movie) keys never repeat within or across splits
    keys = []
    for sp in SPLITS:
        t = _read_split(tmp_path / "full", sp)
        pos = t.column("label").to_numpy() == 1.0
        k = t.column("user_key").to_numpy()[pos] * 10_000 + t.column("movie_id").to_numpy()[pos]
        keys.append(k[t.column("movie_id").to_numpy()[pos] != 0])  # OOV movies (valid/test only) have no key
    assert len(keys[0]) == 1_000_209 - 2 * 6040
    allk = np.concatenate(keys)
    assert len(np.unique(allk)) == len(allk)


def test_default_yaml_configs_match_dataclass_defaults():
    import dataclasses

    from store_rec.data.avazu import AvazuConfig
    from store_rec.data.criteo import CriteoConfig
    from store_rec.data.dsconfig import CONFIG_DIR, load_dataset_config
    from store_rec.data.movielens import MovieLensConfig

    for name, cls in (("avazu", AvazuConfig), ("criteo", CriteoConfig), ("movielens", MovieLensConfig)):
        got = load_dataset_config(cls, CONFIG_DIR / f"{name}.yaml")
        assert dataclasses.asdict(got) == dataclasses.asdict(cls()), name
