"""`data prepare table` (your own files + a YAML schema), interaction logs, given splits, TorchRec's
Criteo npy files and the sanity figures. Expected values are computed here from the raw rows."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from _byod import LOG_SCHEMA, WIDE_SCHEMA, write_interaction_log, write_wide_csv
from store_rec.cli import main
from store_rec.data.prepare import prepare
from store_rec.data.schema import SPLITS, DatasetSchema
from store_rec.data.vocab import load_vocab


def _split(d: Path, split: str) -> pa.Table:
    s = DatasetSchema.load(d)
    files = s.splits[split].files
    if not files:
        return pa.table({})
    return pa.concat_tables([pq.read_table(d / f) for f in files])


def _rows(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------ table
def test_table_roles_encoding_and_workers_agree(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_wide_csv(src / "a.csv", rows=700, seed=1)
    write_wide_csv(src / "b.csv", rows=500, seed=2)
    schema = tmp_path / "s.yaml"
    schema.write_text(WIDE_SCHEMA)
    out1, out2 = tmp_path / "w1", tmp_path / "w2"
    s1 = prepare("table", str(src), out1, schema=str(schema), workers=1)
    prepare("table", str(src), out2, schema=str(schema), workers=2)
    raw = _rows(src / "a.csv") + _rows(src / "b.csv")
    assert sum(s1.splits[k].rows for k in SPLITS) == len(raw)
    for split in SPLITS:  # the split and the encoding do not depend on the number of workers
        assert _split(out1, split).equals(_split(out2, split))
    assert [f.name for f in s1.sparse] == ["user_id", "item_id", "site", "brand", "color", "device", "hour", "tags"]
    assert s1.feature("site").vocab_size == 512 and s1.feature("site").vocab_file is None
    assert s1.feature("tags").multi_hot and s1.feature("tags").max_len == 3
    assert s1.groups == {"item": ["brand", "color", "tags"], "context": ["device", "hour"]}
    assert s1.user_key == "user_key" and s1.dense == ["price", "age", "score"]
    # vocabularies are fitted on the train rows only
    train = _split(out1, "train")
    brand = load_vocab(out1, "brand")
    assert set(brand.values.to_pylist()) == {f"b{i}" for i in range(7)}
    # every row's values are the raw row's: find rows through the (unique) dense 'score' + 'age' pair
    by_key = {(r["score"], r["age"]): r for r in raw}
    t = pq.read_table(out1 / s1.splits["test"].files[0])
    items = load_vocab(out1, "item_id")
    item_train = set(load_vocab(out1, "item_id").values.to_pylist())
    for row in t.slice(0, 50).to_pylist():
        r = by_key[(f"{row['score']:.3f}", str(int(row["age"])))]
        assert row["click"] == float(r["click"])
        want_price = np.log1p(float(r["price"])) if r["price"] else 0.0  # missing -> fill 0 -> log1p(0)
        assert row["price"] == pytest.approx(want_price, rel=1e-6)
        assert items.decode([row["item_id"]]) == [r["item_id"] if r["item_id"] in item_train else None]
        tags = [t for t in r["tags"].split("|") if t]
        assert len(row["tags"]) == len(tags)
    assert train.num_rows == s1.splits["train"].rows
    # the hashed column is the same value -> same bucket in every split and file
    assert s1.params["passes"] == 2


def test_table_hash_only_is_one_pass_and_deterministic(tmp_path):
    src = tmp_path / "t.csv"
    src.write_text("y,a,b\n1,x,p\n0,y,q\n1,x,q\n0,z,p\n")
    sch = {"columns": {"y": {"role": "label"}, "a": {"role": "id", "hash_buckets": 1000},
                       "b": {"role": "static", "group": "g", "hash_buckets": 10}}}
    s = prepare("table", str(src), tmp_path / "o", schema=sch, sanity=False)
    assert s.params["passes"] == 1 and not (tmp_path / "o" / "vocab").exists()
    rows = pa.concat_tables([_split(tmp_path / "o", k) for k in SPLITS if s.splits[k].rows]).to_pylist()
    from store_rec.data.table import hash_strings

    assert sorted(r["a"] for r in rows) == sorted(int(h % 1000) for h in hash_strings(pa.array(list("xyxz"))))
    assert sorted(r["b"] for r in rows) == sorted(int(h % 10) for h in hash_strings(pa.array(list("pqqp"))))

    h = hash_strings(pa.array(["x", "y", "x", ""]))
    assert h[0] == h[2] and h[0] != h[1] and h[3] != h[0]
    assert int(hash_strings(pa.array(["x"]))[0]) == int(h[0])  # independent of the batch it is in


@pytest.mark.parametrize("yaml_text, match", [
    ("columns: {y: {role: label}, a: {role: id, bogus: 1}}", r"columns\.a\.bogus: unknown key"),
    ("columns: {y: {role: label}, a: {role: static}}", r"columns\.a(\.group)?: .*semantic group"),
    ("columns: {y: {role: label}, a: {role: dense, group: g}}", r"columns\.a(\.group)?: only static"),
    ("columns: {a: {role: id}}", r"columns: a table needs one column with role: label"),
    ("colums: {a: {role: id}}", r"colums: unknown key"),
])
def test_table_schema_errors_name_the_key(tmp_path, capsys, yaml_text, match):
    src = tmp_path / "t.csv"
    src.write_text("y,a\n1,x\n")
    sch = tmp_path / "s.yaml"
    sch.write_text(yaml_text)
    assert main(["data", "prepare", "table", "--source", str(src), "--schema", str(sch), "--out",
                 str(tmp_path / "o")]) == 2
    import re

    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_table_column_errors_name_file_column_and_line(tmp_path, capsys):
    src = tmp_path / "t.csv"
    src.write_text("y,a,extra\n1,x,1\n")
    sch = tmp_path / "s.yaml"
    sch.write_text("columns: {y: {role: label}, a: {role: id}}")
    assert main(["data", "prepare", "table", "--source", str(src), "--schema", str(sch), "--out", str(tmp_path / "o")]) == 2
    assert "['extra'] in the header have no role" in capsys.readouterr().err
    sch.write_text("columns: {y: {role: label}, a: {role: id}, extra: {role: dense}, gone: {role: drop}}")
    assert main(["data", "prepare", "table", "--source", str(src), "--schema", str(sch), "--out", str(tmp_path / "o")]) == 2
    assert "missing column(s) ['gone']" in capsys.readouterr().err
    src.write_text("y,a,extra\n1,x,1\n1,x,abc\n")
    sch.write_text("columns: {y: {role: label}, a: {role: id}, extra: {role: dense}}")
    assert main(["data", "prepare", "table", "--source", str(src), "--schema", str(sch), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{src}: line 3: column 'extra': not a finite number, got 'abc'" in err
    src.write_text("y,a,extra\n1,x,1\nyes,x,1\n")
    assert main(["data", "prepare", "table", "--source", str(src), "--schema", str(sch), "--out", str(tmp_path / "o")]) == 2
    assert "line 3: column 'y': label must be 0 or 1, got 'yes'" in capsys.readouterr().err
    src.write_text("y,a,extra\n1,x,1\n2,x,1\n")
    assert main(["data", "prepare", "table", "--source", str(src), "--schema", str(sch), "--out", str(tmp_path / "o")]) == 2
    assert "line 3: column 'y': label must be 0 or 1, got '2'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["data", "prepare", "table", "--source", str(src), "--schema", str(sch), "--out", str(tmp_path / "o"),
                 "--skip-bad-rows"]) == 0
    assert DatasetSchema.load(tmp_path / "o").params["skipped_rows"] == 1


# ------------------------------------------------------------------------------------ given splits
def test_given_splits_are_kept_row_for_row_table_and_parquet_input(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    parts = {}
    for i, name in enumerate(("train", "dev", "test")):
        write_wide_csv(d / f"{name}.csv", rows=200 + 50 * i, seed=10 + i)
        parts[name] = _rows(d / f"{name}.csv")
    import pyarrow.csv as pacsv

    pq.write_table(pacsv.read_csv(d / "test.csv", convert_options=pacsv.ConvertOptions(
        column_types={"tags": pa.string()})), tmp_path / "test.parquet")
    sch = tmp_path / "s.yaml"
    sch.write_text(WIDE_SCHEMA.replace("split: {method: random, train_frac: 0.8, valid_frac: 0.1}", ""))
    # explicit --splits (CSV train/valid, parquet test: the format is per file)
    out = tmp_path / "o"
    assert main(["data", "prepare", "table", "--schema", str(sch), "--out", str(out), "--splits",
                 f"train={d / 'train.csv'},valid={d / 'dev.csv'},test={tmp_path / 'test.parquet'}"]) == 0
    s = DatasetSchema.load(out)
    assert s.split_method.startswith("given")
    for split, name in (("train", "train"), ("valid", "dev"), ("test", "test")):
        t = _split(out, split)
        assert t.column("click").to_pylist() == [float(r["click"]) for r in parts[name]]  # same rows, same order
        assert [f"{x:.3f}" for x in t.column("score").to_pylist()] == [r["score"] for r in parts[name]]
    # a directory of files named train/dev/test: kept as given without asking ...
    s2 = prepare("table", str(d), tmp_path / "o2", schema=str(sch))
    assert {k: v.rows for k, v in s2.splits.items()} == {"train": 200, "valid": 250, "test": 300}
    # ... and re-split only when asked
    s3 = prepare("table", str(d), tmp_path / "o3", schema=str(sch), resplit=True)
    assert s3.split_method.startswith("random") and s3.splits["train"].rows != 200
    # parquet input (typed columns) gives the same rows as the CSV it was made from
    (tmp_path / "pq").mkdir()
    os.replace(tmp_path / "test.parquet", tmp_path / "pq" / "test.parquet")  # (a directory of parquet files)
    s4 = prepare("table", None, tmp_path / "o4", schema=str(sch), splits={"train": str(tmp_path / "pq")})
    t4, t = _split(tmp_path / "o4", "train"), _split(out, "test")
    assert s4.splits["train"].rows == 300
    for c in ("click", "price", "age", "score"):  # (vocab ids differ: fitted on other train rows)
        assert t4.column(c).to_pylist() == t.column(c).to_pylist(), c


def _criteo_line(rng, label):
    dense = [str(int(rng.integers(0, 50))) if rng.random() > 0.1 else "" for _ in range(13)]
    cats = [f"{int(rng.integers(0, 40)):08x}" for _ in range(26)]
    return "\t".join([str(label), *dense, *cats])


def test_given_splits_criteo(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "criteo"
    d.mkdir()
    labels = {}
    for name, n in (("train.txt", 120), ("dev.txt", 40), ("test.txt", 30)):
        ys = [int(rng.integers(0, 2)) for _ in range(n)]
        labels[name] = ys
        (d / name).write_text("\n".join(_criteo_line(rng, y) for y in ys) + "\n")
    s = prepare("criteo", str(d), tmp_path / "c", min_count=1)
    for split, name in (("train", "train.txt"), ("valid", "dev.txt"), ("test", "test.txt")):
        assert _split(tmp_path / "c", split).column("label").to_pylist() == [float(y) for y in labels[name]]
    assert "kept row for row" in s.split_method
    s = prepare("criteo", None, tmp_path / "c2", min_count=1,
                splits={"train": str(d / "train.txt"), "valid": str(d / "dev.txt"), "test": str(d / "test.txt")})
    assert {k: v.rows for k, v in s.splits.items()} == {"train": 120, "valid": 40, "test": 30}
    s = prepare("criteo", str(d), tmp_path / "c3", min_count=1, resplit=True)
    assert s.split_method.startswith("random")
    with pytest.raises(Exception, match="--splits is not supported"):
        prepare("movielens", None, tmp_path / "m", splits={"train": "x"})


# ------------------------------------------------------------------------------------ interactions
def _log(tmp_path, schema_text=LOG_SCHEMA, **kw):
    src = tmp_path / "log.csv"
    write_interaction_log(src, **kw)
    sch = tmp_path / "log.yaml"
    sch.write_text(schema_text)
    return src, sch


def test_interactions_behavior_labels_leave_last_out_side_features_sequences(tmp_path):
    src, sch = _log(tmp_path, LOG_SCHEMA.replace("negatives: {strategy: popularity, ratio: 1}",
                                                 "negatives: {strategy: uniform, ratio: 2}"))
    out = tmp_path / "o"
    s = prepare("table", str(src), out, schema=str(sch))
    raw = _rows(src)
    pos = [r for r in raw if r["behavior"] in ("buy", "cart")]
    assert s.params["positives"] == len(pos) and s.params["sampled_negatives"] == 2 * len(pos)
    total = sum(v.rows for v in s.splits.values())
    assert total == len(raw) + 2 * len(pos)
    assert sum(v.positives for v in s.splits.values()) == len(pos)
    items, cats = load_vocab(out, "item"), load_vocab(out, "category")
    cat_of = {r["item"]: r["category"] for r in raw}
    user_items = {}
    for r in raw:
        user_items.setdefault(r["user"], set()).add(r["item"])
    users = load_vocab(out, "user")
    for split in SPLITS:
        for row in _split(out, split).to_pylist():
            item = items.decode([row["item"]])[0]
            if item is None:
                continue
            # item side features follow the item, also on sampled negatives
            assert cats.decode([row["category"]])[0] in (cat_of[item], None)
    # leave-last-out: per user with >= 3 positives exactly one positive in test, one in valid
    test = _split(out, "test").to_pylist()
    per_user = {}
    for row in test:
        per_user[row["user_key"]] = per_user.get(row["user_key"], 0) + int(row["label"])
    assert set(per_user.values()) == {1}
    # and it is the user's last positive in time
    last = {}
    for r in pos:
        if r["user"] not in last or int(r["timestamp"]) >= int(last[r["user"]]["timestamp"]):
            last[r["user"]] = r
    for row in test:
        if row["label"] == 1.0:
            u = users.decode([row["user"]])[0]
            if u is not None:
                assert items.decode([row["item"]])[0] == last[u]["item"]
    # sequences in the dataset's own id space: train positives of each user in time order
    seq = pq.read_table(out / "sequences.parquet").to_pylist()
    assert s.sequences.num_items == items.size - 1
    assert all(1 <= i <= s.sequences.num_items for r in seq for i in r["items"])
    assert sum(len(r["items"]) for r in seq) == s.splits["train"].positives


def test_negative_sampling_strategies_and_popularity_auc(tmp_path):
    """Uniform negatives on a skewed log: popularity separates positives (AUC >> 0.5); popularity-matched
    negatives: popularity alone is near chance; both never draw an item of the user."""
    rng = np.random.default_rng(0)
    p = 1.0 / np.arange(1, 301) ** 1.1
    lines = ["user,item,ts"]
    for u in range(300):
        for j, i in enumerate(rng.choice(300, size=12, replace=False, p=p / p.sum())):
            lines.append(f"u{u},i{i},{j}")
    src = tmp_path / "log.csv"
    src.write_text("\n".join(lines) + "\n")
    base = ("kind: interactions\ncolumns:\n  user: {role: user_key}\n  item: {role: id, item_key: true}\n"
            "  ts: {role: timestamp}\ninteractions: {negatives: {strategy: STRATEGY, ratio: 3}}\n")
    aucs = {}
    for strategy in ("uniform", "popularity"):
        sch = tmp_path / f"{strategy}.yaml"
        sch.write_text(base.replace("STRATEGY", strategy))
        out = tmp_path / strategy
        s = prepare("table", str(src), out, schema=str(sch))
        aucs[strategy] = json.loads((out / "sanity.json").read_text())["item_popularity_auc"]
        assert s.user_key == "user_key" and s.sparse_names == ["item"]
        ukeys = {}
        for split in SPLITS:
            t = _split(out, split)
            if t.num_rows == 0:
                continue
            pos_rows = [r for r in t.to_pylist() if r["label"] == 1.0]
            for r in pos_rows:
                ukeys.setdefault(r["user_key"], set()).add(r["item"])
        for split in SPLITS:
            for r in _split(out, split).to_pylist():
                if r["label"] == 0.0 and r["item"] != 0:  # id 0: OOV, items not in train (several share it)
                    assert r["item"] not in ukeys.get(r["user_key"], set())
    assert aucs["uniform"] > 0.7, aucs
    assert abs(aucs["popularity"] - 0.5) < 0.1, aucs


def test_sanity_warns_when_popularity_auc_is_in_the_wrong_direction(tmp_path, capsys):
    # positives on tail items, negatives on head items: popularity anti-predicts the label
    lines = ["y,user,item"]
    rng = np.random.default_rng(0)
    for r in range(2000):
        if rng.random() < 0.3:
            lines.append(f"1,u{r % 50},tail{int(rng.integers(0, 200))}")
        else:
            lines.append(f"0,u{r % 50},head{int(rng.integers(0, 5))}")
    # a few positives on the head so that train popularity (positives) is highest there
    lines += [f"1,u{k % 50},head{k % 5}" for k in range(200)] + [f"0,u{k},tail{k}" for k in range(50)]
    src = tmp_path / "t.csv"
    src.write_text("\n".join(lines) + "\n")
    sch = tmp_path / "s.yaml"
    sch.write_text("columns: {y: {role: label}, user: {role: user_key}, item: {role: id, item_key: true}}\n")
    assert main(["data", "prepare", "table", "--source", str(src), "--schema", str(sch), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    sanity = json.loads((tmp_path / "o" / "sanity.json").read_text())
    assert sanity["item_popularity_auc"] < 0.4
    assert "WARNING: item-popularity AUC on test is" in out and "negatives are MORE popular" in out
    assert "rows per user mean 45.0" in out  # 2250 rows over 50 users
    assert sanity["users"] == 50 and sanity["rows_per_user"]["mean"] == 45.0


def test_sanity_figures_are_exact_on_a_small_dataset(tmp_path):
    from store_rec.data.sanity import popularity_auc

    # items a (2 train positives), b (1), c (0); test: a+ , b-, c+ (c unseen), a-
    # scores a=2, b=1, c=0; pairs (pos, neg): (a,b) 1, (a,a) .5, (c,b) 0, (c,a) 0 -> 1.5 / 4
    score = np.array([2.0, 1.0, 0.0])
    assert popularity_auc(score, score, np.array([1, 0, 1.0]), np.array([1, 1, 0.0])) == pytest.approx(0.375)


def test_time_cutoff_split_for_tables(tmp_path):
    src = tmp_path / "t.csv"
    src.write_text("y,a,ts\n" + "\n".join(f"{i % 2},v{i % 3},2024-01-{1 + i:02d}" for i in range(20)) + "\n")
    sch = {"columns": {"y": {"role": "label"}, "a": {"role": "id"}, "ts": {"role": "timestamp"}},
           "split": {"method": "time", "valid_from": "2024-01-15", "test_from": "2024-01-18"}}
    s = prepare("table", str(src), tmp_path / "o", schema=sch)
    assert {k: v.rows for k, v in s.splits.items()} == {"train": 14, "valid": 3, "test": 3}


# ------------------------------------------------------------------------------------ torchrec npy
def test_torchrec_criteo_npy_files(tmp_path):
    from torchrec.datasets.criteo import BinaryCriteoUtils

    rng = np.random.default_rng(0)
    d = tmp_path / "npy"
    d.mkdir()
    lab = {}
    for day, n in ((0, 60), (1, 40), (2, 30)):
        ys = [int(rng.integers(0, 2)) for _ in range(n)]
        lab[day] = ys
        tsv = tmp_path / f"day_{day}"
        tsv.write_text("\n".join(_criteo_line(rng, y) for y in ys) + "\n")
        BinaryCriteoUtils.tsv_to_npys(str(tsv), str(d / f"day_{day}_dense.npy"), str(d / f"day_{day}_sparse.npy"),
                                      str(d / f"day_{day}_labels.npy"))  # TorchRec's own writer: its layout/dtypes
    out = tmp_path / "o"
    assert main(["data", "prepare", "torchrec_criteo", "--source", str(d), "--out", str(out),
                 "--set", "num_embeddings=1000"]) == 0
    s = DatasetSchema.load(out)
    # TorchRec's split: days 0..D-2 train, the last day halves valid / test
    assert {k: v.rows for k, v in s.splits.items()} == {"train": 100, "valid": 15, "test": 15}
    assert _split(out, "train").column("label").to_pylist() == [float(y) for y in lab[0] + lab[1]]
    assert _split(out, "test").column("label").to_pylist() == [float(y) for y in lab[2][15:]]
    dense = np.load(d / "day_0_dense.npy")
    sparse = np.load(d / "day_0_sparse.npy")
    t = _split(out, "train")
    np.testing.assert_allclose(np.asarray(t.column("I3").to_pylist()[:60]), dense[:, 2])
    np.testing.assert_array_equal(np.asarray(t.column("C5").to_pylist()[:60]), sparse[:, 4] % 1000)
    assert all(f.vocab_size == 1000 for f in s.sparse) and s.user_key is None
    # the loader reads it
    from store_rec.data.loader import ParquetBatchLoader

    b = next(iter(ParquetBatchLoader(out, "train", batch_size=16)))
    assert b.dense_features.shape == (16, 13) and b.labels.shape == (16,)


def test_avazu_sample_with_train_dev_test_files_keeps_them(shared_datasets, tmp_path):
    import gzip

    src = shared_datasets / "avazu" / "lapis-hong_wide-resdnn"  # dev.csv, test.csv, train.csv.gz

    def n_rows(p):
        opener = gzip.open if p.name.endswith(".gz") else open
        with opener(p, "rt") as f:
            return sum(1 for line in f if line.strip() and not line.startswith("id,"))

    s = prepare("avazu", str(src), tmp_path / "a")
    assert {k: v.rows for k, v in s.splits.items()} == {
        "train": n_rows(src / "train.csv.gz"), "valid": n_rows(src / "dev.csv"), "test": n_rows(src / "test.csv")}
    assert s.split_method.startswith("given")


def test_example_schemas_validate_and_criteo_tsv_through_prepare_table(tmp_path):
    from store_rec.data.table import load_table_config

    cfgs = Path(__file__).resolve().parents[1] / "configs" / "datasets"
    for name in ("table_example", "interactions_example", "criteo_table"):
        load_table_config(str(cfgs / f"{name}.yaml"))
    rng = np.random.default_rng(1)
    ys = [int(rng.integers(0, 2)) for _ in range(300)]
    (tmp_path / "day_0").write_text("\n".join(_criteo_line(rng, y) for y in ys) + "\n")
    s = prepare("table", str(tmp_path / "day_0"), tmp_path / "o", schema=str(cfgs / "criteo_table.yaml"),
                min_count=1)
    assert sum(v.rows for v in s.splits.values()) == 300 and s.user_key is None
    assert s.feature("C3").vocab_size == 10_000_000 and s.feature("C3").vocab_file is None
    rows = pa.concat_tables([_split(tmp_path / "o", k) for k in SPLITS]).to_pylist()
    raw = (tmp_path / "day_0").read_text().splitlines()
    from store_rec.data.criteo import hash_column as criteo_hash

    c3 = [line.split("\t")[1 + 13 + 2] for line in raw]
    want = dict(zip(c3, criteo_hash(pa.chunked_array([pa.array(c3)]), 10_000_000, "C3", "x")))
    assert {r["C3"] for r in rows} == {int(v) for v in want.values()}  # TorchRec's int(hex, 16) % buckets


def test_interactions_time_quantile_split_and_implicit_feedback(tmp_path):
    src = tmp_path / "log.csv"
    src.write_text("user,item,ts\n" + "\n".join(f"u{i % 7},i{i % 50},{i}" for i in range(200)) + "\n")
    sch = {"kind": "interactions", "columns": {"user": {"role": "user_key"}, "item": {"role": "id", "item_key": True},
                                               "ts": {"role": "timestamp"}},
           "split": {"method": "time", "train_frac": 0.8, "valid_frac": 0.1},
           "interactions": {"negatives": {"strategy": "uniform", "ratio": 1}}}
    s = prepare("table", str(src), tmp_path / "o", schema=sch)
    assert s.params["negatives"] == "uniform" and s.params["positives"] == 200
    assert {k: v.positives for k, v in s.splits.items()} == {"train": 160, "valid": 20, "test": 20}
    assert {k: v.rows for k, v in s.splits.items()} == {"train": 320, "valid": 40, "test": 40}


def test_bench_prepare_quick_measures_and_cleans_up(tmp_path):
    out = tmp_path / "b" / "prep.json"
    assert main(["bench", "prepare", "--quick", "--out", str(out), "--tmp", str(tmp_path)]) == 0
    d = json.loads(out.read_text())
    assert [(r["rows"], r["workers"]) for r in d["records"]] == [(10000, 1), (30000, 1), (30000, 2)]
    for r in d["records"]:
        assert r["peak_rss_mib"] >= r["peak_proc_rss_mib"] > 50 and r["rows_per_s"] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # the generated CSV and outputs are gone
