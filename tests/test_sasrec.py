"""SASRec pre-training: learns planted sequential structure, beats popularity, CLI writes EMB + JSON."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from store_rec.errors import DataError, UserError
from store_rec.tokenizer.sasrec import (SASRecConfig, Sequences, hr_ndcg, load_sequences_text, rank_of_target,
                                        train_sasrec)


def planted_sequences(num_users=400, num_items=241, cluster=12, length=16, seed=0) -> Sequences:
    """Items 1..240 in 20 clusters; each user walks one cluster in its cyclic order (10% noise)."""
    rng = np.random.default_rng(seed)
    n_clusters = (num_items - 1) // cluster
    seqs = []
    for _ in range(num_users):
        c = rng.integers(n_clusters)
        start = rng.integers(cluster)
        walk = 1 + c * cluster + (start + np.arange(length)) % cluster
        noise = rng.random(length) < 0.1
        walk[noise] = rng.integers(1, num_items, size=int(noise.sum()))
        # keep sequences duplicate-free so "not interacted" negatives are well defined
        _, first = np.unique(walk, return_index=True)
        seqs.append(walk[np.sort(first)])
    return Sequences(items=seqs, num_items=num_items)


def test_hr_ndcg_hand_computed():
    ranks = np.array([0, 1, 9, 10, 50])
    m = hr_ndcg(ranks)
    assert m["hr@10"] == pytest.approx(3 / 5)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(11)) / 5)


def test_rank_ties_are_not_free():
    # a constant scorer must get chance-level ranks (mean ~ N/2), not rank 0
    scores = np.zeros((4000, 101))
    r = rank_of_target(scores, np.random.default_rng(0))
    assert abs(r.mean() - 50) < 2
    assert hr_ndcg(r)["hr@10"] == pytest.approx(10 / 101, abs=0.02)


def test_sasrec_beats_popularity_on_planted_sequences():
    seqs = planted_sequences(num_users=250)
    cfg = SASRecConfig(dim=32, max_len=16, epochs=8, batch_size=32, lr=3e-3, dropout=0.1, seed=0)
    res = train_sasrec(seqs, cfg)
    m = res.metrics
    assert res.embeddings.shape == (241, 32)
    assert np.isfinite(res.embeddings).all()
    # the next item is determined by the cluster walk: the model must find it; popularity cannot
    assert m["sasrec_test"]["hr@10"] > m["popularity_test"]["hr@10"] + 0.3, m
    assert m["sasrec_valid"]["ndcg@10"] > m["popularity_valid"]["ndcg@10"] + 0.2, m
    # seeded: same config, same numbers
    res2 = train_sasrec(seqs, SASRecConfig(dim=16, max_len=16, epochs=1, batch_size=64, seed=0))
    res3 = train_sasrec(seqs, SASRecConfig(dim=16, max_len=16, epochs=1, batch_size=64, seed=0))
    np.testing.assert_array_equal(res2.embeddings, res3.embeddings)


def test_sasrec_beats_popularity_on_movielens_sample(shared_datasets):
    # first 200 users of the ML-1M (user, movie) pairs, in file order, remapped to dense ids
    t = pq.read_table(shared_datasets / "ml-1m" / "aurasparktraining" / "ratings.parquet")
    users = np.asarray(t.column("userID").to_pylist(), dtype=np.int64)
    movies = np.asarray(t.column("movieID").to_pylist(), dtype=np.int64)
    keep = users <= 200
    users, movies = users[keep], movies[keep]
    uniq, dense = np.unique(movies, return_inverse=True)
    dense = dense + 1
    bounds = np.flatnonzero(np.diff(users)) + 1
    seqs = Sequences(items=[s[-30:] for s in np.split(dense, bounds)], num_items=len(uniq) + 1)
    res = train_sasrec(seqs, SASRecConfig(dim=32, max_len=30, epochs=5, batch_size=32, lr=2e-3, seed=0))
    m = res.metrics
    assert m["sasrec_valid"]["hr@10"] > m["popularity_valid"]["hr@10"] - 0.02, m  # learned something
    assert m["sasrec_valid"]["hr@10"] > 0.3, m


def test_load_sequences_text_and_errors(tmp_path):
    p = tmp_path / "s.txt.gz"
    with gzip.open(p, "wt") as f:
        f.write("1 5\n2 7\n1 6\n1 9\n2 8\n")
    s = load_sequences_text(p)
    assert s.num_items == 10
    assert [x.tolist() for x in s.items] == [[5, 6, 9], [7, 8]]
    bad = tmp_path / "bad.txt"
    bad.write_text("1 5\n1 0\n")
    with pytest.raises(DataError, match="line 2"):
        load_sequences_text(bad)
    bad.write_text("1 5 3\n")
    with pytest.raises(DataError, match="2 columns"):
        load_sequences_text(bad)
    with pytest.raises(UserError, match="epochs"):
        train_sasrec(s, SASRecConfig(epochs=0))


def test_pretrain_cli_writes_embeddings_and_metrics(tmp_path):
    from store_rec.cli import main
    from store_rec.tokenizer.embeddings import load_embeddings, read_metadata

    seqs = planted_sequences(num_users=120, length=10)
    txt = tmp_path / "seq.txt"
    with open(txt, "w") as f:
        for u, s in enumerate(seqs.items):
            for i in s:
                f.write(f"{u + 1} {i}\n")
    out = tmp_path / "emb.parquet"
    rc = main(["pretrain", "--sequences", str(txt), "--out", str(out), "--epochs", "1", "--dim", "16",
               "--max-len", "10"])
    assert rc == 0
    ids, emb = load_embeddings(out, expected_dim=16)
    seen = np.unique(np.concatenate(seqs.items))
    np.testing.assert_array_equal(ids, seen)
    meta = read_metadata(out)
    assert meta["dim"] == 16 and meta["source"] == "sasrec" and meta["num_items"] == int(seen.max()) + 1
    rep = json.loads(out.with_suffix(".json").read_text())
    for k in ("sasrec_valid", "sasrec_test", "popularity_valid", "popularity_test"):
        assert 0.0 <= rep["metrics"][k]["hr@10"] <= 1.0
    assert rep["epochs"] == 1 and rep["seconds"] > 0


def test_pretrain_cli_from_prepared_dir(tmp_path):
    import pyarrow as pa

    from store_rec.cli import main
    from store_rec.data.schema import DatasetSchema, SequenceInfo, SparseFeature
    from store_rec.tokenizer.embeddings import load_embeddings, read_metadata

    seqs = planted_sequences(num_users=120, length=10)
    n_items = 241 + 3  # vocab ids 241..243 never occur: still exported (complete vocab table)
    pq.write_table(pa.table({"user": pa.array(np.arange(120), pa.int64()),
                             "items": pa.array([s.tolist() for s in seqs.items], pa.list_(pa.int64()))}),
                   tmp_path / "sequences.parquet")
    DatasetSchema(dataset="t", label="label",
                  sparse=[SparseFeature(name="movie", role="id", vocab_size=n_items, vocab_file="vocab/movie.parquet")],
                  sequences=SequenceInfo(file="sequences.parquet", item_feature="movie", num_items=n_items,
                                         num_users=120)).save(tmp_path)
    out = tmp_path / "emb.parquet"
    assert main(["pretrain", "--data", str(tmp_path), "--out", str(out), "--epochs", "1", "--dim", "8",
                 "--max-len", "10"]) == 0
    ids, _ = load_embeddings(out, expected_dim=8, expected_ids=n_items)
    assert len(ids) == n_items - 1
    assert read_metadata(out)["item_feature"] == "movie"
    assert json.loads(out.with_suffix(".json").read_text())["unseen_items"] == int(n_items - 1 - len(np.unique(np.concatenate(seqs.items))))
    # an id outside the vocabulary is a data error naming the row
    bad = [s.tolist() for s in seqs.items]
    bad[7][0] = n_items
    pq.write_table(pa.table({"user": pa.array(np.arange(120), pa.int64()),
                             "items": pa.array(bad, pa.list_(pa.int64()))}), tmp_path / "sequences.parquet")
    with pytest.raises(DataError, match=f"row 7: item id {n_items} outside"):
        from store_rec.tokenizer.sasrec import load_sequences_dir

        load_sequences_dir(tmp_path)
