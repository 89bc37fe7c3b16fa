"""SASRec pre-training: learns planted sequential structure, beats popularity by a margin (planted data and a
prepared MovieLens sample), samples negatives only from items that exist, CLI writes EMB + JSON."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from store_rec.data.sampling import sample_negatives
from store_rec.errors import DataError, UserError
from store_rec.tokenizer.sasrec import (SASRecConfig, Sequences, _Split, history_keys, hr_ndcg, load_sequences_dir,
                                        load_sequences_text, rank_of_target, train_sasrec)


def planted_sequences(num_users=400, num_items=240, cluster=12, length=16, seed=0) -> Sequences:
    """Items 1..240 in 20 clusters; each user walks one cluster in its cyclic order (10% noise)."""
    rng = np.random.default_rng(seed)
    n_clusters = num_items // cluster
    seqs = []
    for _ in range(num_users):
        c = rng.integers(n_clusters)
        start = rng.integers(cluster)
        walk = 1 + c * cluster + (start + np.arange(length)) % cluster
        noise = rng.random(length) < 0.1
        walk[noise] = rng.integers(1, num_items + 1, size=int(noise.sum()))
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
    cfg = SASRecConfig(dim=32, max_len=16, epochs=12, batch_size=32, lr=3e-3, dropout=0.1, seed=0)
    res = train_sasrec(seqs, cfg)
    m = res.metrics
    assert res.embeddings.shape == (241, 32)  # ids 1..240 + padding row 0
    assert np.isfinite(res.embeddings).all()
    # the next item is determined by the cluster walk: the model must find it; popularity cannot
    # (measured, seed 0: test HR@10 0.56 vs 0.13, test NDCG@10 0.50 vs 0.09, valid NDCG@10 0.70 vs 0.10;
    # test is lower than valid because a deduplicated walk that went round its cycle ends on noise)
    assert m["sasrec_test"]["hr@10"] > m["popularity_test"]["hr@10"] + 0.35, m
    assert m["sasrec_test"]["ndcg@10"] > m["popularity_test"]["ndcg@10"] + 0.3, m
    assert m["sasrec_valid"]["ndcg@10"] > m["popularity_valid"]["ndcg@10"] + 0.5, m
    assert res.beats_popularity and res.catalog_size == 240
    # seeded: same config, same numbers
    res2 = train_sasrec(seqs, SASRecConfig(dim=16, max_len=16, epochs=1, batch_size=64, seed=0))
    res3 = train_sasrec(seqs, SASRecConfig(dim=16, max_len=16, epochs=1, batch_size=64, seed=0))
    np.testing.assert_array_equal(res2.embeddings, res3.embeddings)


def _prepare_movielens(shared_datasets, out, max_users):
    from store_rec.data.prepare import prepare

    return prepare("movielens", str(shared_datasets / "ml-1m"), out, max_users=max_users)


def test_sasrec_beats_popularity_on_movielens_sample(shared_datasets, tmp_path):
    # first 300 users of ML-1M through `data prepare` (file order; sequences = their train positives)
    _prepare_movielens(shared_datasets, tmp_path / "ml", 300)
    seqs = load_sequences_dir(tmp_path / "ml")
    res = train_sasrec(seqs, SASRecConfig(dim=32, max_len=30, epochs=20, batch_size=64, lr=3e-3, seed=0))
    m = res.metrics
    # measured (seed 0): test HR@10 0.823 vs popularity 0.377, NDCG@10 0.544 vs 0.222
    for split in ("valid", "test"):
        assert m[f"sasrec_{split}"]["hr@10"] > m[f"popularity_{split}"]["hr@10"] + 0.25, m
        assert m[f"sasrec_{split}"]["ndcg@10"] > m[f"popularity_{split}"]["ndcg@10"] + 0.15, m
    assert res.beats_popularity


def test_negatives_come_from_existing_items_the_user_did_not_touch():
    # ids up to 1000 are possible, but only even ids <= 200 ever occur (like gaps in raw MovieLens ids)
    rng = np.random.default_rng(0)
    items = [rng.choice(np.arange(2, 201, 2), size=int(rng.integers(5, 40)), replace=False) for _ in range(300)]
    seqs = Sequences(items=items, num_items=1000)
    np.testing.assert_array_equal(seqs.catalog(), np.arange(2, 201, 2))
    split = _Split(seqs, n_neg=50, seed=0)
    for which in ("valid", "test"):
        c = split.cands[which]
        assert c.shape == (300, 51)
        negs = c[:, 1:]
        assert np.isin(negs, seqs.catalog()).all()  # never an id that does not occur in the data
        for u, s in enumerate(items):
            assert not np.isin(negs[u], s).any()  # never an item of the user's history
        np.testing.assert_array_equal(c[:, 0], [s[-2 if which == "valid" else -1] for s in items])
    # the vectorised sampler, hand-checked: user 0 owns items {1, 2}, user 1 owns {3}; catalog {1, 2, 3}
    keys = history_keys([np.array([1, 2]), np.array([3])], num_rows=4)
    np.testing.assert_array_equal(keys, [1, 2, 7])
    out = sample_negatives(np.random.default_rng(1), np.array([1, 2, 3]), np.array([0] * 50 + [1] * 50), keys, 4)
    assert (out[:50] == 3).all() and np.isin(out[50:], [1, 2]).all() and set(out[50:]) == {1, 2}
    # a user who interacted with every catalog item cannot get negatives: clear error
    with pytest.raises(UserError, match="user index 0 interacted with all 3 catalog items"):
        _Split(Sequences(items=[np.array([1, 2, 3]), np.array([3, 1, 2])], num_items=3), n_neg=1, seed=0)
    with pytest.raises(UserError, match="only 100 distinct items occur"):
        _Split(seqs, n_neg=100, seed=0)


def test_load_sequences_text_and_errors(tmp_path):
    p = tmp_path / "s.txt.gz"
    with gzip.open(p, "wt") as f:
        f.write("1 5\n2 7\n1 6\n1 9\n2 8\n")
    s = load_sequences_text(p)
    assert s.num_items == 9 and s.num_rows == 10  # ids 1..9 (max id), + padding row 0
    assert [x.tolist() for x in s.items] == [[5, 6, 9], [7, 8]]
    np.testing.assert_array_equal(s.catalog(), [5, 6, 7, 8, 9])
    bad = tmp_path / "bad.txt"
    bad.write_text("1 5\n1 0\n")
    with pytest.raises(DataError, match="line 2"):
        load_sequences_text(bad)
    bad.write_text("1 5 x\n")  # (one line per user, "1 5 3", is valid: test_pretrain_chance.py)
    with pytest.raises(DataError, match="line 1: expected integers"):
        load_sequences_text(bad)
    with pytest.raises(UserError, match="epochs"):
        train_sasrec(s, SASRecConfig(epochs=0))


def _write_text(path, seqs):
    with open(path, "w") as f:
        for u, s in enumerate(seqs.items):
            for i in s:
                f.write(f"{u + 1} {i}\n")


def test_pretrain_cli_writes_embeddings_and_metrics(tmp_path):
    from store_rec.cli import main
    from store_rec.tokenizer.embeddings import load_embeddings, read_metadata

    seqs = planted_sequences(num_users=120, length=10)
    txt = tmp_path / "seq.txt"
    _write_text(txt, seqs)
    out = tmp_path / "emb.parquet"
    rc = main(["pretrain", "--sequences", str(txt), "--out", str(out), "--epochs", "1", "--dim", "16",
               "--max-len", "10"])
    assert rc == 0
    ids, emb = load_embeddings(out, expected_dim=16)
    seen = np.unique(np.concatenate(seqs.items))
    np.testing.assert_array_equal(ids, seen)
    meta = read_metadata(out)
    assert meta["dim"] == 16 and meta["source"] == "sasrec" and meta["num_items"] == int(seen.max())
    rep = json.loads(out.with_suffix(".json").read_text())
    for k in ("sasrec_valid", "sasrec_test", "popularity_valid", "popularity_test"):
        assert 0.0 <= rep["metrics"][k]["hr@10"] <= 1.0
    assert rep["epochs"] == 1 and rep["seconds"] > 0 and rep["catalog_items"] == len(seen)
    assert rep["beats_popularity"] == (rep["metrics"]["sasrec_test"]["ndcg@10"]
                                       > rep["metrics"]["popularity_test"]["ndcg@10"])


def test_pretrain_warns_when_popularity_wins(tmp_path, capsys, caplog):
    # no sequential structure, strongly skewed popularity: an (almost) untrained SASRec cannot beat counts
    from store_rec.cli import main

    rng = np.random.default_rng(0)
    p = 1.0 / np.arange(1, 201) ** 1.2
    items = [rng.choice(np.arange(1, 201), size=12, replace=False, p=p / p.sum()) for _ in range(200)]
    txt = tmp_path / "zipf.txt"
    _write_text(txt, Sequences(items=items, num_items=200))
    # the library logs a warning (checked before the CLI: its logging.basicConfig(force=True) unhooks caplog)
    with caplog.at_level("WARNING", logger="store_rec.tokenizer.sasrec"):
        res = train_sasrec(load_sequences_text(txt), SASRecConfig(dim=8, max_len=12, epochs=1, lr=1e-7))
    assert not res.beats_popularity
    assert any("does NOT beat the popularity" in r.getMessage() for r in caplog.records)
    out = tmp_path / "emb.parquet"
    assert main(["pretrain", "--sequences", str(txt), "--out", str(out), "--epochs", "1", "--dim", "8",
                 "--max-len", "12", "--lr", "1e-7"]) == 0
    rep = json.loads(out.with_suffix(".json").read_text())
    m = rep["metrics"]
    assert m["sasrec_test"]["ndcg@10"] <= m["popularity_test"]["ndcg@10"], m
    assert rep["beats_popularity"] is False and "does not beat popularity" in rep["warning"]
    assert "WARNING: SASRec does not beat popularity on test NDCG@10" in capsys.readouterr().err


def test_pretrain_end_to_end_on_prepared_movielens(shared_datasets, tmp_path, capsys):
    # `data prepare movielens` then `pretrain --data`: every item id 1..N is exported (this crashed with
    # "item id N outside [0, N)" when pretrain read sequences.num_items as rows including OOV)
    from store_rec.cli import main
    from store_rec.data.schema import DatasetSchema
    from store_rec.tokenizer.embeddings import load_embeddings, read_metadata

    assert main(["data", "prepare", "movielens", "--source", str(shared_datasets / "ml-1m"), "--out",
                 str(tmp_path / "ml"), "--set", "max_users=120"]) == 0
    schema = DatasetSchema.load(tmp_path / "ml")
    n = schema.sequences.num_items
    vocab = next(f.vocab_size for f in schema.sparse if f.name == schema.sequences.item_feature)
    assert vocab == n + 1
    seqs = load_sequences_dir(tmp_path / "ml")
    assert int(np.concatenate(seqs.items).max()) == n  # the largest id does occur (the crash case)
    out = tmp_path / "emb.parquet"
    assert main(["pretrain", "--data", str(tmp_path / "ml"), "--out", str(out), "--epochs", "2", "--dim", "8",
                 "--max-len", "20"]) == 0
    ids, emb = load_embeddings(out, expected_dim=8, expected_ids=vocab)
    np.testing.assert_array_equal(ids, np.arange(1, n + 1))
    assert emb.shape == (n, 8) and np.isfinite(emb).all()
    assert read_metadata(out)["item_feature"] == "movie_id" and read_metadata(out)["num_items"] == n
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["exported_items"] == n and rep["num_items"] == n
    assert rep["unseen_items"] == n - len(seqs.catalog())
    assert "wrote" in capsys.readouterr().out


def test_pretrain_cli_from_prepared_dir(tmp_path):
    import pyarrow as pa

    from store_rec.cli import main
    from store_rec.data.schema import DatasetSchema, SequenceInfo, SparseFeature
    from store_rec.tokenizer.embeddings import load_embeddings, read_metadata

    seqs = planted_sequences(num_users=120, length=10)
    n_items = 240 + 3  # vocab ids 241..243 never occur: still exported (complete vocab table)
    pq.write_table(pa.table({"user": pa.array(np.arange(120), pa.int64()),
                             "items": pa.array([s.tolist() for s in seqs.items], pa.list_(pa.int64()))}),
                   tmp_path / "sequences.parquet")

    def write_schema(num_items, vocab_size):
        DatasetSchema(dataset="t", label="label",
                      sparse=[SparseFeature(name="movie", role="id", vocab_size=vocab_size,
                                            vocab_file="vocab/movie.parquet")],
                      sequences=SequenceInfo(file="sequences.parquet", item_feature="movie", num_items=num_items,
                                             num_users=120)).save(tmp_path)

    write_schema(n_items, n_items + 1)
    out = tmp_path / "emb.parquet"
    assert main(["pretrain", "--data", str(tmp_path), "--out", str(out), "--epochs", "1", "--dim", "8",
                 "--max-len", "10"]) == 0
    ids, _ = load_embeddings(out, expected_dim=8, expected_ids=n_items + 1)
    np.testing.assert_array_equal(ids, np.arange(1, n_items + 1))
    assert read_metadata(out)["item_feature"] == "movie"
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["unseen_items"] == int(n_items - len(np.unique(np.concatenate(seqs.items))))
    # num_items and the item feature's vocab_size disagree: named in the error
    write_schema(n_items, n_items)
    with pytest.raises(DataError, match=r"sequences.num_items = 243 but feature 'movie' has vocab_size = 243"):
        load_sequences_dir(tmp_path)
    # an id outside the vocabulary is a data error naming the row
    write_schema(n_items, n_items + 1)
    bad = [s.tolist() for s in seqs.items]
    bad[7][0] = n_items + 1
    pq.write_table(pa.table({"user": pa.array(np.arange(120), pa.int64()),
                             "items": pa.array(bad, pa.list_(pa.int64()))}), tmp_path / "sequences.parquet")
    with pytest.raises(DataError, match=f"row 7: item id {n_items + 1} outside \\[0, {n_items}\\]"):
        load_sequences_dir(tmp_path)
