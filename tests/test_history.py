"""History lists (role ``history``, issue 13): no leakage, alignment, truncation, loader keys, bad config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from store_rec.config import ConfigError
from store_rec.data.history import (GAP_VOCAB, RecentPositives, build_history_index, gap_buckets, history_features,
                                    truncate_lists)
from store_rec.data.loader import ParquetBatchLoader
from store_rec.data.prepare import prepare
from store_rec.data.schema import DatasetSchema, SchemaError, SparseFeature
from store_rec.data.sid_table import write_sid_table
from store_rec.data.synthetic import prepare_synthetic
from store_rec.data.vocab import load_vocab
from store_rec.errors import UserError

SPLITS = ("train", "valid", "test")


def _reference(user, time, eligible, n):
    """Brute force: per row the last n eligible rows of the user with a strictly smaller time."""
    events = {}
    for e in sorted(range(len(user)), key=lambda e: (time[e], e)):
        if eligible[e]:
            events.setdefault(user[e], []).append(e)
    out = []
    for r in range(len(user)):
        ev = [e for e in events.get(user[r], []) if time[e] < time[r]]
        out.append(ev[-n:] if n else [])
    return out


def _lists(index, rows):
    offs, pos = index.positions(np.asarray(rows))
    return [index.events[pos[offs[i]:offs[i + 1]]].tolist() for i in range(len(rows))]


# ---------------------------------------------------------------------------------------- history.py
def test_hand_built_log_expected_lists():
    #            row: 0   1   2   3   4   5   6   7   8
    user = np.array([7, 7, 7, 7, 7, 3, 3, 7, 3])
    time = np.array([10, 20, 20, 30, 40, 5, 6, 50, 7])
    label = np.array([1, 1, 1, 0, 1, 1, 1, 1, 1])
    test = np.array([0, 0, 0, 0, 0, 0, 1, 1, 0])  # rows 6 and 7 are test interactions
    idx = build_history_index(user, time, (label == 1) & (test == 0), max_len=2)
    got = _lists(idx, range(9))
    assert got == [
        [],        # 0: first interaction of user 7
        [0],       # 1: t=20 sees t=10, not row 2 (same instant)
        [0],       # 2: likewise, not row 1
        [1, 2],    # 3: the two t=20 positives (newest 2 of [0, 1, 2]), oldest first
        [1, 2],    # 4: row 3 is a negative: never history
        [],        # 5: user 3's first
        [5],       # 6: a test row sees earlier non-test history
        [2, 4],    # 7: last 2 of [0, 1, 2, 4]
        [5],       # 8: row 6 is a test interaction: in no history
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_index_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 300
    user = rng.integers(0, 12, n)
    time = rng.integers(0, 40, n).astype(np.float64)  # many ties
    eligible = rng.random(n) < 0.6
    for max_len in (1, 3, 50):
        idx = build_history_index(user, time, eligible, max_len)
        ref = _reference(user, time, eligible, max_len)
        assert _lists(idx, np.arange(n)) == ref
        sel = rng.permutation(n)[:40]  # any subset / order of rows
        assert _lists(idx, sel) == [ref[r] for r in sel]


def test_truncate_gap_and_ring_buffer():
    lens = np.array([0, 3, 1, 5])
    offs = np.r_[0, np.cumsum(lens)]
    vals = np.arange(9)
    nl, no, nv = truncate_lists(lens, offs, vals, 2)
    assert nl.tolist() == [0, 2, 1, 2] and no.tolist() == [0, 0, 2, 3, 5] and nv.tolist() == [1, 2, 3, 7, 8]
    nl, no, nv = truncate_lists(lens, offs, vals, 0)
    assert nl.tolist() == [0, 0, 0, 0] and len(nv) == 0
    assert truncate_lists(lens, offs, vals, 5)[2] is vals  # nothing to cut
    assert gap_buckets(np.array([0.5, 1, 2, 3, 1e30])).tolist() == [1, 2, 2, 3, GAP_VOCAB - 1]
    rb = RecentPositives(num_users=3, max_len=3)
    for t in range(5):  # user 1 gets items 10..14, user 2 item 100 once
        rb.push(np.array([1] + ([2] if t == 0 else [])), np.array([10 + t] + ([100] if t == 0 else [])),
                np.array([float(t)] + ([0.0] if t == 0 else [])))
    offs, items, times = rb.lists(np.array([0, 1, 2, 1]))
    assert offs.tolist() == [0, 0, 3, 4, 7]
    assert items.tolist() == [12, 13, 14, 100, 12, 13, 14] and times.tolist()[:3] == [2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="distinct"):
        rb.push(np.array([1, 1]), np.array([1, 2]), np.array([9.0, 9.0]))


def test_schema_history_role_and_backward_compatible_json(tmp_path):
    base = [SparseFeature("item", "id", 10)]
    hist = SparseFeature("hist_item", "history", 10, multi_hot=True, max_len=4, history_of="item")
    s = DatasetSchema(dataset="x", label="label", sparse=base + [hist])
    s.validate()
    d = s.to_dict()
    assert DatasetSchema.from_dict(d).feature("hist_item").history_of == "item"
    old = json.loads(json.dumps(d))
    old["sparse"] = [{k: v for k, v in f.items() if k != "history_of"} for f in old["sparse"][:1]]
    assert DatasetSchema.from_dict(old).feature("item").history_of is None  # schema.json of before issue 13
    assert [f.name for f in history_features(s)] == ["hist_item"]
    for bad, msg in ((dict(multi_hot=False), "multi_hot"), (dict(history_of="nope"), "not a sparse feature"),
                     (dict(vocab_size=11), "differs")):
        f = SparseFeature(**{**hist.__dict__, **bad})
        with pytest.raises(SchemaError, match=msg):
            DatasetSchema(dataset="x", label="label", sparse=base + [f]).validate()
    with pytest.raises(SchemaError, match="only for role"):
        DatasetSchema(dataset="x", label="label",
                      sparse=[SparseFeature("a", "static", 3, group="g", history_of="a")]).validate()


# ---------------------------------------------------------------------------------------- MovieLens
def _table(d: Path, split: str) -> dict:
    return pq.read_table(d / split).to_pydict()


@pytest.fixture(scope="module")
def ml_hist(shared_datasets, tmp_path_factory):
    out = tmp_path_factory.mktemp("mlh") / "ml"
    s = prepare("movielens", str(shared_datasets / "ml-1m"), out, max_users=20, history_len=8, sanity=False)
    return shared_datasets / "ml-1m", out, s


def test_movielens_history_no_leakage_and_alignment(ml_hist):
    root, out, s = ml_hist
    import gzip

    pairs = []
    with gzip.open(root / "aurasparktraining" / "ratings_user_movie_pairs.tsv.gz", "rt") as f:
        users = []
        for line in f:
            u, m = line.split()
            if u not in users:
                if len(users) == 20:
                    break
                users.append(u)
            pairs.append((int(u), m))
    seq = {}
    for u, m in pairs:
        seq.setdefault(u, []).append(m)
    mv = load_vocab(out, "movie_id")
    h = s.params["history"]
    assert h["max_len"] == 8 and h["columns"] == ["hist_movie_id", "hist_genres", "hist_year_bucket", "hist_gap"]
    assert [(f.name, f.history_of) for f in s.history] == [("hist_movie_id", "movie_id"), ("hist_genres", "genres"),
                                                           ("hist_year_bucket", "year_bucket"), ("hist_gap", None)]
    assert all(f.role == "history" and f.multi_hot and f.max_len == 8 for f in s.history)
    genre_of = {}
    for line in (root / "grouplens" / "movies.dat").read_text(encoding="latin-1").splitlines():
        mid, _, genres = line.split("::")
        genre_of[mid] = genres.split("|")[0]
    gv = load_vocab(out, "genres")
    known = set(mv.values.to_pylist())
    for split in SPLITS:
        t = _table(out, split)
        lens = {c: [len(x) for x in t[c]] for c in h["columns"]}
        assert len({tuple(v) for v in lens.values()}) == 1  # aligned lists
        prev_pos = None
        for i in range(len(t["label"])):
            u = t["user_key"][i]
            got = mv.decode(t["hist_movie_id"][i])
            if t["label"][i] == 1.0:
                movie = mv.decode([t["movie_id"][i]])[0]
                j = len(seq[u]) - 1 - seq[u][::-1].index(movie) if movie else None
                # the last 8 positives before this one in file order (the last positive is test: never history)
                if movie is not None:
                    expect = [m for m in seq[u][:j] if len(seq[u]) < 3 or m != seq[u][-1]][-8:]
                    assert got == [m if m in known else None for m in expect]
                prev_pos = t["hist_movie_id"][i]
            else:
                assert t["hist_movie_id"][i] == prev_pos  # sampled negatives share their positive's history
            if len(seq[u]) >= 3:
                assert seq[u][-1] not in got  # the test positive is in no history
            if None not in got:
                assert gv.decode(t["hist_genres"][i]) == [genre_of[m] for m in got]
            assert all(1 <= g < GAP_VOCAB for g in t["hist_gap"][i])
            assert t["hist_gap"][i] == sorted(t["hist_gap"][i], reverse=True)  # oldest first: gaps shrink
    assert set(h["mean_len"]) == set(SPLITS) and h["mean_len"]["test"] == 8.0


def test_movielens_ratings_dat_timestamps_ties_and_explicit_negatives(shared_datasets, tmp_path):
    root = tmp_path / "ml"
    root.mkdir()
    for n in ("users.dat", "movies.dat"):
        (root / n).write_bytes((shared_datasets / "ml-1m" / "grouplens" / n).read_bytes())
    # user 1 by time: 1(+)@10 2(-)@20 3(+)@20 4(+)@20 5(+)@100 6(+)@1000 7(+)@1100  (test 7, valid 6)
    (root / "ratings.dat").write_text("1::7::5::1100\n1::4::4::20\n1::1::5::10\n1::2::1::20\n1::3::5::20\n"
                                      "1::5::4::100\n1::6::5::1000\n")
    out = tmp_path / "out"
    s = prepare("movielens", str(root), out, neg_ratio=0, history_len=3, sanity=False)
    assert s.params["history"]["time"].startswith("seconds")
    mv = load_vocab(out, "movie_id")
    got = {}
    for sp in SPLITS:
        t = _table(out, sp)
        for m, h, g in zip(t["movie_id"], t["hist_movie_id"], t["hist_gap"]):
            got[mv.decode([m])[0] or sp] = (mv.decode(h), g)
    b = lambda gap: int(1 + np.floor(np.log2(1 + gap)))  # noqa: E731
    assert got == {
        "1": ([], []),
        "2": (["1"], [b(10)]), "3": (["1"], [b(10)]), "4": (["1"], [b(10)]),  # same second: not each other
        # the negative 2 is no history; equal times keep the file order (4 before 3)
        "5": (["1", "4", "3"], [b(90), b(80), b(80)]),
        "valid": (["4", "3", "5"], [b(980), b(980), b(900)]),    # movie 6 (valid): the newest 3
        "test": (["3", "5", None], [b(1080), b(1000), b(100)]),  # movie 7: 6 (valid, OOV id) is in it
    }


def test_movielens_user_holdout_test_interactions_in_no_history(shared_datasets, tmp_path):
    out = tmp_path / "ml"
    prepare("movielens", str(shared_datasets / "ml-1m"), out, max_users=30, history_len=5, split="user_holdout",
            test_frac=0.3, sanity=False)
    test = _table(out, "test")
    assert len(test["label"]) and all(x == [] for x in test["hist_movie_id"])  # test users: nothing but test rows
    assert any(x for x in _table(out, "train")["hist_movie_id"])


def test_history_off_keeps_the_dataset_unchanged(ml_hist, tmp_path):
    root, out, s = ml_hist
    plain = tmp_path / "plain"
    s0 = prepare("movielens", str(root), plain, max_users=20, sanity=False)
    assert not s0.history and "history" not in s0.params
    for split in SPLITS:
        a, b = _table(plain, split), _table(out, split)
        assert {k: v for k, v in b.items() if not k.startswith("hist_")} == a


# ---------------------------------------------------------------------------------------- interaction log
LOG = """user,item,cat,behavior,ts
a,i1,c1,buy,1
a,i2,c2,pv,2
a,i3,c1,buy,2
a,i4,c2,cart,3
b,i1,c1,buy,1
a,i5,c3,buy,5
b,i2,c2,buy,6
a,i6,c3,buy,7
b,i3,c1,buy,8
"""
LOG_SCHEMA = """kind: interactions
columns:
  user: {role: user_key}
  item: {role: id, item_key: true}
  cat: {role: static, group: item, item_side: true}
  behavior: {role: behavior}
  ts: {role: timestamp}
split: {method: time, valid_from: 5, test_from: 7}
interactions: {positive: [buy, cart], negatives: {strategy: none}, history_len: 3}
"""


def test_interaction_log_expected_lists_time_split(tmp_path):
    (tmp_path / "log.csv").write_text(LOG)
    (tmp_path / "s.yaml").write_text(LOG_SCHEMA)
    out = tmp_path / "o"
    s = prepare("table", str(tmp_path / "log.csv"), out, schema=str(tmp_path / "s.yaml"), sanity=False)
    iv, cv = load_vocab(out, "item"), load_vocab(out, "cat")
    got = {}
    for split in SPLITS:
        t = _table(out, split)
        got[split] = sorted((str(iv.decode([t["item"][i]])[0]), iv.decode(t["hist_item"][i]),
                             cv.decode(t["hist_cat"][i]), t["hist_gap"][i]) for i in range(len(t["label"])))
    # time split: t < 5 train, 5 <= t < 7 valid, t >= 7 test. i5, i6 and c3 are not in train: OOV (None).
    # user a: i1@1 i2@2(pv: a negative, never history) i3@2 i4@3 | i5@5 | i6@7;  user b: i1@1 | i2@6 | i3@8
    # gap id = 1 + floor(log2(1 + gap))
    assert got["train"] == sorted([
        ("i1", [], [], []), ("i1", [], [], []),                   # first interactions
        ("i2", ["i1"], ["c1"], [2]), ("i3", ["i1"], ["c1"], [2]),  # t=2: not each other (same instant)
        ("i4", ["i1", "i3"], ["c1", "c1"], [2, 2]),
    ])
    assert got["valid"] == sorted([
        ("None", ["i1", "i3", "i4"], ["c1", "c1", "c2"], [3, 3, 2]),  # a's i5@5
        ("i2", ["i1"], ["c1"], [3]),                                  # b's i2@6
    ])
    assert got["test"] == sorted([
        ("None", ["i3", "i4", None], ["c1", "c2", None], [3, 3, 2]),  # a's i6@7: the newest 3, i5 (valid) included
        ("i3", ["i1", "i2"], ["c1", "c2"], [4, 2]),                   # b's i3@8
    ])
    h = s.params["history"]
    assert h["max_len"] == 3 and h["columns"] == ["hist_item", "hist_cat", "hist_gap"] and "ts" in h["time"]
    assert [(f.name, f.history_of) for f in s.history] == [("hist_item", "item"), ("hist_cat", "cat"),
                                                           ("hist_gap", None)]


def test_interaction_log_without_time_uses_log_order(tmp_path, capsys):
    (tmp_path / "log.csv").write_text("user,item\na,i1\na,i2\nb,i1\na,i3\na,i4\na,i5\n")
    (tmp_path / "s.yaml").write_text("kind: interactions\ncolumns:\n  user: {role: user_key}\n"
                                     "  item: {role: id, item_key: true}\n"
                                     "interactions: {negatives: {strategy: none}, history_len: 2}\n")
    out = tmp_path / "o"
    s = prepare("table", str(tmp_path / "log.csv"), out, schema=str(tmp_path / "s.yaml"), sanity=False)
    assert "log order" in s.params["history"]["time"]
    iv = load_vocab(out, "item")
    t = _table(out, "train")  # leave_last_out: a's i4 valid, i5 test; b train only
    got = sorted((iv.decode([i])[0], iv.decode(h), g) for i, h, g in zip(t["item"], t["hist_item"], t["hist_gap"]))
    # gap = rows back in the log: a's i3 is 2 rows after i2 (b's row between), 3 after i1
    assert got == [("i1", [], []), ("i1", [], []), ("i2", ["i1"], [2]), ("i3", ["i1", "i2"], [3, 2])]
    from store_rec.cli import main

    assert main(["data", "info", str(out)]) == 0
    assert "history (max_len 2): hist_item[4] <- item, hist_gap[64]" in capsys.readouterr().out


def test_bad_history_config_names_the_key(shared_datasets, tmp_path):
    src = str(shared_datasets / "ml-1m")
    with pytest.raises(ConfigError, match="history_len"):
        prepare("movielens", src, tmp_path / "a", max_users=5, history_len=-1)
    with pytest.raises(ConfigError, match=r"history_sides\[0\]"):
        prepare("movielens", src, tmp_path / "a", max_users=5, history_len=4, history_sides=["gender"])
    with pytest.raises(UserError, match="history_window"):
        prepare_synthetic(tmp_path / "s", rows=100, items=50, users=10, num_clusters=4, history_len=4,
                          history_window=5)
    with pytest.raises(UserError, match="history_scale.*needs history_len"):
        prepare_synthetic(tmp_path / "s", rows=100, items=50, users=10, num_clusters=4, history_scale=2.0)
    with pytest.raises(UserError, match="history_len"):
        prepare_synthetic(tmp_path / "s", rows=100, items=50, users=10, num_clusters=4, history_len=-2)
    (tmp_path / "log.csv").write_text(LOG)
    for text, key in ((LOG_SCHEMA.replace("history_len: 3", "history_len: 3, history_sides: [user]"),
                       r"interactions.history_sides\[0\]"),
                      (LOG_SCHEMA.replace("history_len: 3", "history_len: -1"), "interactions.history_len")):
        (tmp_path / "s.yaml").write_text(text)
        with pytest.raises(ConfigError, match=key):
            prepare("table", str(tmp_path / "log.csv"), tmp_path / "o", schema=str(tmp_path / "s.yaml"))
    (tmp_path / "s.yaml").write_text("columns:\n  user: {role: id}\n  y: {role: label}\n"
                                     "interactions: {history_len: 4}\n")
    with pytest.raises(ConfigError, match="interactions.history_len.*kind: interactions"):
        prepare("table", str(tmp_path / "log.csv"), tmp_path / "o", schema=str(tmp_path / "s.yaml"))
    from store_rec.config import from_dict
    from store_rec.train.config import DataConfig

    with pytest.raises(ConfigError, match="history_len"):
        from_dict(DataConfig, {"dir": "x", "history_len": -1})
    assert from_dict(DataConfig, {"dir": "x", "history_len": 4}).history_len == 4
    assert not any((tmp_path / n).exists() for n in ("a", "s", "o"))


# ---------------------------------------------------------------------------------------- synthetic
SYN = dict(rows=12_000, items=400, users=150, num_clusters=8, num_user_groups=4, seed=5)


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    out = tmp_path_factory.mktemp("synh") / "ds"
    s = prepare_synthetic(out, history_len=12, history_window=6, history_scale=1.5, **SYN)
    return out, s


def test_synthetic_history_no_leakage_and_truth(syn, tmp_path):
    out, s = syn
    t = {sp: _table(out, sp) for sp in SPLITS}
    # split: time -> train, valid, test are consecutive in the stream: concatenated they are the row order
    cols = {k: sum((t[sp][k] for sp in SPLITS), []) for k in ("user_id", "item_id", "label", "hist_item_id",
                                                                "hist_category", "hist_gap")}
    split = np.repeat([0, 1, 2], [len(t[sp]["label"]) for sp in SPLITS])
    user, label = np.array(cols["user_id"]), np.array(cols["label"])
    n = len(user)
    idx = build_history_index(user, np.arange(n), (label == 1) & (split != 2), 12)
    items = np.array(cols["item_id"])
    offs, pos = idx.positions(np.arange(n))
    ref_items = items[idx.events[pos]]
    got = np.concatenate([np.asarray(x, np.int64) for x in cols["hist_item_id"]])
    assert np.array_equal(got, ref_items)  # the generator's lists == the batch builder's rule
    assert [len(x) for x in cols["hist_item_id"]] == np.diff(offs).tolist()
    truth = pq.read_table(out / "truth" / "items.parquet").to_pydict()
    cluster = np.array([0] + truth["cluster"])
    cat_ok = [c for x, c in zip(cols["hist_item_id"], cols["hist_category"]) if len(x)]
    assert all(len(c) for c in cat_ok)
    # the planted term: rows whose history favours the target cluster click more
    T = pq.read_table(out / "truth" / "history.parquet").to_pydict()
    C = SYN["num_clusters"]
    Tm = np.array(T["weight"]).reshape(C, C)
    term = np.array([Tm[cluster[np.asarray(h[-6:], np.int64)], cluster[it]].sum() / np.sqrt(len(h[-6:])) if h else 0.0
                     for h, it in zip(cols["hist_item_id"], items)])
    hi, lo = label[term > 1.0].mean(), label[term < -1.0].mean()
    assert hi - lo > 0.25, (hi, lo)
    h = s.params["history"]
    assert h["max_len"] == 12 and s.params["history_window"] == 6 and "truth/history.parquet" in s.params["truth_files"]
    assert [(f.name, f.history_of, f.vocab_size) for f in s.history] == [
        ("hist_item_id", "item_id", SYN["items"] + 1), ("hist_category", "category", 17), ("hist_gap", None, GAP_VOCAB)]
    # history off: the same stream, only the labels differ
    s0 = prepare_synthetic(tmp_path / "off", **SYN)
    t0 = _table(tmp_path / "off", "train")
    assert t0["item_id"] == t["train"]["item_id"] and t0["label"] != t["train"]["label"]
    assert "history" not in s0.params and "history_len" not in s0.params and not s0.history


def test_synthetic_history_chunk_invariant(syn, tmp_path):
    out, _ = syn
    prepare_synthetic(tmp_path / "c", history_len=12, history_window=6, history_scale=1.5, chunk_rows=4096, **SYN)
    for sp in SPLITS:
        assert pq.read_table(tmp_path / "c" / sp).equals(pq.read_table(out / sp))


# ---------------------------------------------------------------------------------------- loader
def test_loader_history_keys_truncation_and_sids(syn, tmp_path):
    out, s = syn
    full = ParquetBatchLoader(out, "valid", 64)
    b = next(iter(full))
    kjt = b.sparse_features
    assert full.keys[-3:] == ["hist_item_id", "hist_category", "hist_gap"]
    lens = {k: kjt[k].lengths() for k in ("hist_item_id", "hist_category", "hist_gap")}
    assert all(np.array_equal(lens["hist_item_id"], v) for v in lens.values()) and lens["hist_item_id"].max() > 3
    t = _table(out, "valid")
    assert [x.tolist() for x in kjt["hist_item_id"].to_dense()] == t["hist_item_id"][:64]
    # history_len n: the newest n of each list, schema max_len follows
    three = ParquetBatchLoader(out, "valid", 64, history_len=3)
    k3 = next(iter(three)).sparse_features
    assert [x.tolist() for x in k3["hist_item_id"].to_dense()] == [h[-3:] for h in t["hist_item_id"][:64]]
    assert [x.tolist() for x in k3["hist_gap"].to_dense()] == [h[-3:] for h in t["hist_gap"][:64]]
    assert three.schema.feature("hist_item_id").max_len == 3
    # 0: no history key at all (same as a dataset without history)
    none = ParquetBatchLoader(out, "valid", 64, history_len=0)
    assert not any(k.startswith("hist_") for k in none.keys) and not none.schema.history
    with pytest.raises(UserError, match="history_len"):
        ParquetBatchLoader(out, "valid", 64, history_len=-1)
    plain = tmp_path / "plain"
    prepare_synthetic(plain, rows=2000, items=50, users=20, num_clusters=4)
    with pytest.raises(UserError, match="history_len=4: .* has no history features"):
        ParquetBatchLoader(plain, "valid", 64, history_len=4)
    assert ParquetBatchLoader(plain, "valid", 64, history_len=0).keys == ParquetBatchLoader(plain, "valid", 64).keys
    # SID table attached: {H}_sid_k for the item history only, same lookup as the target (OOV -> C)
    ids = np.arange(1, SYN["items"] + 1)
    keep = ids[ids % 5 != 0]  # every 5th item has no SIDs
    codes = np.stack([keep % 7, keep % 3], 1)
    sid = write_sid_table(tmp_path / "sids.parquet", keep, codes, method="opmq", codebook_size=7, item_feature="item_id")
    for shuffle in (False, True):
        ld = ParquetBatchLoader(out, "valid", 64, sid_table=sid, history_len=5, shuffle=shuffle, seed=3)
        assert ld.keys[-2:] == ["hist_item_id_sid_0", "hist_item_id_sid_1"]
        assert "hist_category_sid_0" not in ld.keys and "hist_gap_sid_0" not in ld.keys
        f = ld.schema.feature("hist_item_id_sid_1")
        assert (f.role, f.history_of, f.vocab_size, f.multi_hot, f.max_len) == ("history", "sid_1", 8, True, 5)
        for batch in ld:
            k = batch.sparse_features
            hv = k["hist_item_id"].values().numpy()
            assert np.array_equal(k["hist_item_id_sid_0"].lengths(), k["hist_item_id"].lengths())
            exp0 = np.where(hv % 5 == 0, 7, hv % 7)
            exp0[hv == 0] = 7  # an OOV history item -> the OOV SID, like the target
            assert np.array_equal(k["hist_item_id_sid_0"].values().numpy(), exp0)
            assert np.array_equal(k["hist_item_id_sid_1"].values().numpy(), np.where(hv % 5 == 0, 7, hv % 3))
            item = k["item_id"].values().numpy()
            assert np.array_equal(k["sid_0"].values().numpy(), np.where(item % 5 == 0, 7, item % 7))
        ld.schema.validate()  # the loader's schema (with the history SIDs) is a valid schema
    # without a SID table nothing is appended
    assert not any("_sid_" in k for k in ParquetBatchLoader(out, "valid", 64).keys)


def test_loader_reads_prepared_interaction_history(tmp_path):
    (tmp_path / "log.csv").write_text(LOG)
    (tmp_path / "s.yaml").write_text(LOG_SCHEMA)
    out = tmp_path / "o"
    prepare("table", str(tmp_path / "log.csv"), out, schema=str(tmp_path / "s.yaml"), sanity=False)
    ld = ParquetBatchLoader(out, "train", 2, history_len=1)
    got = [x.tolist() for b in ld for x in b.sparse_features["hist_item"].to_dense()]
    t = _table(out, "train")
    assert got == [h[-1:] for h in t["hist_item"]]
    assert pa.types.is_list(pq.read_schema(out / "train" / "part-00000.parquet").field("hist_item").type)
