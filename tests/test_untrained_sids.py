"""Items without a trained pre-trained embedding get the OOV SID, never a shared collapsed tuple."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq

from store_rec.cli import main
from store_rec.tokenizer.embeddings import load_embeddings, load_trained_mask, read_metadata, save_embeddings


def _emb_with_untrained(n_trained=400, n_untrained=600, d=16, seed=0):
    """Trained rows: 8 clusters at unit scale; untrained rows: SASRec's initialisation at a 10k-item
    table (xavier normal, std ~0.014) -- the case that collapsed on real data."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, d))
    trained = centres[rng.integers(0, 8, n_trained)] + 0.3 * rng.standard_normal((n_trained, d))
    untrained = np.sqrt(2.0 / (10_000 + d)) * rng.standard_normal((n_untrained, d))
    emb = np.concatenate([trained, untrained]).astype(np.float32)
    ids = np.arange(1, n_trained + n_untrained + 1, dtype=np.int64)
    mask = np.arange(len(ids)) < n_trained
    return ids, emb, mask


def _tokenize(tmp_path, emb_path, name):
    out, rep = tmp_path / f"{name}.parquet", tmp_path / f"{name}.json"
    assert main(["tokenize", "--embeddings", str(emb_path), "--num-sids", "3", "--codebook-size", "16",
                 "--steps", "150", "--out", str(out), "--report", str(rep)]) == 0
    t = pq.read_table(out)
    codes = np.stack([t.column(f"sid_{k}").to_numpy() for k in range(3)], 1)
    return t.column("item").to_numpy(), codes, json.loads(rep.read_text())


def test_untrained_items_collapse_without_mark_and_get_oov_with_it(tmp_path):
    ids, emb, mask = _emb_with_untrained()
    # reproduce the collapse: without the mark the untrained items share a few tuples
    save_embeddings(tmp_path / "plain.parquet", ids, emb, {"dim": 16})
    got, codes, rep = _tokenize(tmp_path, tmp_path / "plain.parquet", "plain")
    un = ~mask[got - 1]
    _, counts = np.unique(codes[un], axis=0, return_counts=True)
    assert counts.max() > 0.2 * un.sum(), counts.max()  # one tuple holds a large share of them
    assert rep["untrained_items"] == 0 and rep["warnings"]  # ...and the report says so
    # with the mark: untrained items are left out of the table (the loader gives them the OOV SID)
    save_embeddings(tmp_path / "marked.parquet", ids, emb, {"dim": 16}, trained=mask)
    assert read_metadata(tmp_path / "marked.parquet")["untrained_items"] == 600
    np.testing.assert_array_equal(load_trained_mask(tmp_path / "marked.parquet"), mask)
    assert load_trained_mask(tmp_path / "plain.parquet") is None
    got, codes, rep = _tokenize(tmp_path, tmp_path / "marked.parquet", "marked")
    np.testing.assert_array_equal(got, ids[mask])
    assert rep["untrained_items"] == 600 and rep["num_items"] == 400 and rep["warnings"] == []


def test_pretrain_marks_items_in_no_sequence(tmp_path):
    from store_rec.data.synthetic import prepare_synthetic

    prepare_synthetic(tmp_path / "ds", rows=2000, items=800, users=200, num_clusters=8, num_user_groups=4,
                      max_sequence_users=30, seq_max_len=10)
    seq_items = {i for row in pq.read_table(tmp_path / "ds" / "sequences.parquet")["items"].to_pylist() for i in row}
    out = tmp_path / "emb.parquet"
    assert main(["pretrain", "--data", str(tmp_path / "ds"), "--out", str(out), "--epochs", "1", "--dim", "16",
                 "--max-len", "10"]) == 0
    ids, _ = load_embeddings(out)
    mask = load_trained_mask(out)
    np.testing.assert_array_equal(mask, np.isin(ids, sorted(seq_items)))
    assert 0 < (~mask).sum() == read_metadata(out)["untrained_items"]
    assert json.loads(out.with_suffix(".json").read_text())["unseen_items"] == int((~mask).sum())
