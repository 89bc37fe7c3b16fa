"""Synthetic generator: determinism, streaming, schema roles and the planted structure."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from store_rec.data.loader import ParquetBatchLoader
from store_rec.data.schema import DatasetSchema
from store_rec.data.synthetic import prepare_synthetic
from store_rec.errors import UserError

SMALL = dict(rows=30_000, items=2_000, users=600, num_clusters=8, num_user_groups=4)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "ds"
    prepare_synthetic(out, seed=7, **SMALL)
    return out


def _read(d, split="train"):
    return pq.read_table(d / split)


def test_schema_roles_groups_and_counts(ds):
    s = DatasetSchema.load(ds)
    assert s.dataset == "synthetic" and s.user_key == "user_id" and s.label == "label"
    assert [f.name for f in s.features_with_role("id")] == ["item_id", "user_id", "seller_id"]
    assert s.groups == {"user": ["gender", "age_bucket", "city_tier", "interest_tags"],
                        "item": ["category", "price_bucket", "brand_tier"],
                        "context": ["hour", "weekday", "device"]}
    assert s.feature("item_id").vocab_size == 2_001 and s.feature("user_id").vocab_size == 601
    assert all(f.vocab_file is None for f in s.sparse)
    assert s.feature("interest_tags").multi_hot and s.feature("interest_tags").max_len == 4
    assert s.dense == ["item_quality", "user_propensity"]
    rows = {k: v.rows for k, v in s.splits.items()}
    assert rows == {"train": 24_000, "valid": 3_000, "test": 3_000}
    assert s.sequences.file == "sequences.parquet" and s.sequences.item_feature == "item_id"
    assert s.sequences.num_users == 600 and s.sequences.num_items == 2_000
    for split in ("train", "valid", "test"):
        t = _read(ds, split)
        assert t.num_rows == rows[split]
        for f in s.sparse:
            col = t[f.name].combine_chunks()
            vals = (pa.compute.list_flatten(col) if f.multi_hot else col).to_numpy()
            assert vals.min() >= 1 and vals.max() < f.vocab_size, f.name  # 0 = OOV never generated
        rate = s.splits[split].positives / rows[split]
        assert 0.1 < rate < 0.5, (split, rate)
        assert abs(np.mean(t["label"].to_numpy()) - rate) < 1e-9


def test_multi_hot_tags_present(ds):
    t = _read(ds)
    assert t.schema.field("interest_tags").type == pa.list_(pa.int64())
    lens = pa.compute.list_value_length(t["interest_tags"].combine_chunks()).to_numpy()
    assert lens.min() == 1 and lens.max() == 4 and len(set(lens.tolist())) == 4


def test_deterministic_by_seed_and_chunk_invariant(ds, tmp_path):
    again = prepare_synthetic(tmp_path / "again", seed=7, chunk_rows=4096, **SMALL)  # 1 block per chunk
    assert again.splits["train"].rows == 24_000
    for split in ("train", "valid", "test"):
        assert _read(ds, split).equals(_read(tmp_path / "again", split))
    for rel in ("sequences.parquet", "truth/items.parquet", "truth/users.parquet"):
        assert pq.read_table(ds / rel).equals(pq.read_table(tmp_path / "again" / rel))
    other = prepare_synthetic(tmp_path / "other", seed=8, **SMALL)
    assert other.splits["train"].rows == 24_000
    assert not _read(ds).equals(_read(tmp_path / "other"))


def test_planted_user_group_by_cluster_structure(ds):
    t = pq.read_table(ds / "train")
    items = t["item_id"].to_numpy()
    users = t["user_id"].to_numpy()
    label = t["label"].to_numpy()
    cluster = np.zeros(2_001, np.int64)
    truth = pq.read_table(ds / "truth" / "items.parquet")
    cluster[truth["item"].to_numpy()] = truth["cluster"].to_numpy()
    group = np.zeros(601, np.int64)
    ut = pq.read_table(ds / "truth" / "users.parquet")
    group[ut["user"].to_numpy()] = ut["group"].to_numpy()
    cell = group[users] * 8 + cluster[items]
    n = np.bincount(cell, minlength=32)
    pos = np.bincount(cell, weights=label, minlength=32)
    ok = n >= 200
    ctr = pos[ok] / n[ok]
    binomial_sd = np.sqrt(ctr.mean() * (1 - ctr.mean()) / n[ok]).mean()
    assert ok.sum() >= 16
    assert ctr.max() - ctr.min() > 0.25
    assert ctr.std() > 5 * binomial_sd  # far more spread than sampling noise


def test_sequences_share_clusters_and_items_are_rare(ds):
    truth = pq.read_table(ds / "truth" / "items.parquet")
    cluster = np.zeros(2_001, np.int64)
    cluster[truth["item"].to_numpy()] = truth["cluster"].to_numpy()
    assert truth["latent"].type == pa.list_(pa.float32(), 16)
    seq = pq.read_table(ds / "sequences.parquet")
    assert seq["user"].to_numpy().tolist() == list(range(1, 601))
    col = seq["items"].combine_chunks()
    offs = col.offsets.to_numpy()
    c = cluster[col.values.to_numpy()]
    first = np.zeros(len(c), bool)
    first[offs[:-1]] = True
    same = (c[1:] == c[:-1])[~first[1:]].mean()
    p = np.bincount(c, minlength=8) / len(c)
    chance = float((p ** 2).sum())
    assert same > 0.7 and same > 3 * chance, (same, chance)
    lens = np.diff(offs)
    assert lens.min() >= 5 and lens.max() <= 50
    # Zipf popularity: most of the catalogue is rare in the impressions
    counts = np.bincount(_read(ds)["item_id"].to_numpy(), minlength=2_001)[1:]
    assert (counts < 5).mean() > 0.4
    assert counts.max() > 100


def test_latent_vectors_cluster(ds):
    truth = pq.read_table(ds / "truth" / "items.parquet")
    lat = truth["latent"].combine_chunks().values.to_numpy().reshape(-1, 16)
    cl = truth["cluster"].to_numpy()
    centres = np.stack([lat[cl == k].mean(0) for k in range(8)])
    nearest = np.argmin(((lat[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    assert (nearest == cl).mean() > 0.95


def test_loader_reads_synthetic(ds):
    loader = ParquetBatchLoader(ds, "valid", 512)
    b = next(iter(loader))
    assert b.sparse_features.keys() == DatasetSchema.load(ds).sparse_names
    assert b.dense_features.shape == (512, 2)
    assert torch_equal_users(b)


def torch_equal_users(b) -> bool:
    return b.user_ids.tolist() == b.sparse_features["user_id"].values().tolist()


def test_random_split_and_bad_params(tmp_path):
    s = prepare_synthetic(tmp_path / "r", rows=5_000, items=200, users=50, num_clusters=4, split="random")
    rows = {k: v.rows for k, v in s.splits.items()}
    assert sum(rows.values()) == 5_000 and 3_700 < rows["train"] < 4_300
    with pytest.raises(UserError, match=r"unknown parameter\(s\) \['bogus'\]"):
        prepare_synthetic(tmp_path / "x", bogus=1)
    with pytest.raises(UserError, match="items=4: must be >= num_clusters"):
        prepare_synthetic(tmp_path / "x", items=4, num_clusters=8)
    with pytest.raises(UserError, match="not empty"):
        prepare_synthetic(tmp_path / "r", rows=100, items=10, users=5, num_clusters=2)
    assert not (tmp_path / "x").exists()


def test_splits_are_disjoint(ds, tmp_path):
    # rows carry float32 noise in both dense columns: (user, item, dense pair) fingerprints a row
    def fingerprints(d, split):
        t = _read(d, split)
        return set(zip(t["user_id"].to_pylist(), t["item_id"].to_pylist(), t["item_quality"].to_pylist(),
                       t["user_propensity"].to_pylist()))

    for d, total in ((ds, 30_000), (None, 5_000)):
        if d is None:  # the random split too
            d = tmp_path / "r"
            prepare_synthetic(d, rows=5_000, items=200, users=50, num_clusters=4, split="random", seed=3)
        fp = [fingerprints(d, sp) for sp in ("train", "valid", "test")]
        assert [len(f) for f in fp] == [_read(d, sp).num_rows for sp in ("train", "valid", "test")]  # unique rows
        assert not (fp[0] & fp[1]) and not (fp[0] & fp[2]) and not (fp[1] & fp[2])
        assert sum(len(f) for f in fp) == total
    # time split: the chronological stream is cut in order, so the synthetic days do not overlap either
    wd = [set(_read(ds, sp)["weekday"].to_pylist()) for sp in ("train", "valid", "test")]
    assert wd == [{1, 2, 3, 4, 5, 6, 7}, {2}, {3}]  # days 0..7 | 8 | 9 (weekday = day % 7 + 1)


def test_static_groups_parameter(ds, tmp_path):
    from store_rec.data.synthetic import resolve_static_groups

    base = DatasetSchema.load(ds)
    statics = ["gender", "age_bucket", "city_tier", "interest_tags", "category", "price_bucket", "brand_tier",
               "hour", "weekday", "device"]
    s4 = prepare_synthetic(tmp_path / "g4", seed=7, static_groups=4, **SMALL)
    assert s4.groups == {"g1": statics[0:3], "g2": statics[3:6], "g3": statics[6:8], "g4": statics[8:10]}
    assert s4.params["static_groups"] == s4.groups and "static_groups" not in base.params
    for f in s4.sparse:  # only the grouping changes
        b = base.feature(f.name)
        assert (f.role, f.vocab_size, f.multi_hot, f.max_len) == (b.role, b.vocab_size, b.multi_hot, b.max_len)
    for split in ("train", "valid", "test"):
        assert _read(tmp_path / "g4", split).equals(_read(ds, split))
    assert resolve_static_groups(None) == base.groups
    assert list(resolve_static_groups(3).values()) == list(base.groups.values())
    assert resolve_static_groups(1) == {"g1": statics}
    assert resolve_static_groups(10) == {f"g{i + 1}": [n] for i, n in enumerate(statics)}
    custom = {"who": ["gender", "age_bucket", "city_tier", "interest_tags", "hour"],
              "what": ["category", "price_bucket", "brand_tier", "weekday", "device"]}
    sc = prepare_synthetic(tmp_path / "gc", rows=2_000, items=100, users=20, num_clusters=4, static_groups=custom)
    assert sc.groups == custom and len(sc.features_with_role("static")) == 10
    assert DatasetSchema.load(tmp_path / "gc").groups == custom
    bad = [(0, r"static_groups=0: must be in 1\.\.10"), (11, r"static_groups=11: must be in 1\.\.10"),
           ({"a": statics[:9]}, r"static feature\(s\) \['device'\] are in no group"),
           ({"a": statics, "b": ["hour"]}, r"static_groups.b\[0\]: 'hour' is already in group 'a'"),
           ({"a": statics + ["item_id"]}, r"static_groups.a\[10\]: unknown static feature 'item_id'"),
           ("two", r"expected an int \(number of groups\) or a non-empty mapping")]
    for value, msg in bad:
        with pytest.raises(UserError, match=msg):
            prepare_synthetic(tmp_path / "bad", rows=100, items=10, users=5, num_clusters=2, static_groups=value)
        assert not (tmp_path / "bad").exists()


def test_generator_v1_is_the_default_and_unchanged(ds):
    """v1 stays the default and its output did not change when v2 was added (digest from the
    generator before v2 existed)."""
    import hashlib

    s = DatasetSchema.load(ds)
    assert "generator" not in s.params and "cold_item_frac" not in s.params
    with pytest.raises(UserError, match="cold_item_frac.*generator v2"):
        prepare_synthetic(ds.parent / "bad", rows=100, items=50, users=10, num_clusters=4, cold_item_frac=0.1)
    with pytest.raises(UserError, match="generator"):
        prepare_synthetic(ds.parent / "bad", rows=100, items=50, users=10, num_clusters=4, generator="v3")
    out = ds.parent / "v1digest"
    prepare_synthetic(out, seed=3, rows=9000, items=500, users=200, num_clusters=8, num_user_groups=4)
    h = hashlib.sha256()
    for rel in ("train", "valid", "test", "sequences.parquet", "truth/items.parquet", "truth/users.parquet"):
        h.update(str(pq.read_table(out / rel).to_pydict()).encode())
    assert h.hexdigest() == "99e35ff526222f7f2c3d996184e4f5c85e892e9eab930694ec280bf219f377c4"


@pytest.mark.parametrize("split", ["time", "random"])
def test_generator_v2_cold_items_side_info_and_three_way(tmp_path, split):
    out = tmp_path / "v2"
    s = prepare_synthetic(out, seed=1, generator="v2", split=split, **SMALL)
    assert s.params["generator"] == "v2" and s.params["cold_item_frac"] == 0.1 and s.params["three_way_scale"] == 0.5
    truth = pq.read_table(out / "truth" / "items.parquet").to_pydict()
    cold = {i for i, c in zip(truth["item"], truth["cold"]) if c}
    assert len(cold) == 200  # 10 % of 2000 items
    train_items = set(_read(out)["item_id"].to_pylist())
    assert not train_items & cold  # cold items never in train
    test_items = np.array(_read(out, "test")["item_id"].to_pylist())
    frac = np.isin(test_items, list(cold)).mean()
    assert 0.02 < frac < 0.3, frac  # a cold-start test slice
    # cold items are in the pre-training sequences (SASRec learns them; SIDs carry their cluster)
    seq_items = {i for row in pq.read_table(out / "sequences.parquet")["items"].to_pylist() for i in row}
    assert len(cold & seq_items) > 0.5 * len(cold)  # the rarest are in no sequence (OOV SID, see tokenizer)
    # side information carries no cluster: the majority category of a cluster covers ~1/16 of its items
    cl = dict(zip(truth["item"], truth["cluster"]))
    tr = _read(out).to_pydict()
    pairs = np.array(sorted({(i, c) for i, c in zip(tr["item_id"], tr["category"])}))  # one row per item
    pairs[:, 0] = [cl[i] for i in pairs[:, 0]]
    purity = np.mean([np.bincount(pairs[pairs[:, 0] == c, 1]).max() / (pairs[:, 0] == c).sum()
                      for c in np.unique(pairs[:, 0])])
    assert purity < 0.25, purity  # item level; v1: ~0.9
    # the same seed without the 3-way term changes labels only
    s0 = prepare_synthetic(tmp_path / "v2_no3", seed=1, generator="v2", split=split, three_way_scale=0.0, **SMALL)
    a, b = _read(out).to_pydict(), _read(tmp_path / "v2_no3").to_pydict()
    assert a["item_id"] == b["item_id"] and a["label"] != b["label"] and s0.params["three_way_scale"] == 0.0
