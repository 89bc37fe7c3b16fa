"""Item-embedding files: parquet and .npy (+ ids) round trips and every validation error."""

from __future__ import annotations

import numpy as np
import pytest

from store_rec.errors import DataError
from store_rec.tokenizer.embeddings import load_embeddings, read_metadata, save_embeddings


def _table(n=6, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return np.arange(1, n + 1, dtype=np.int64)[::-1].copy(), rng.normal(size=(n, d)).astype(np.float32)


def test_parquet_round_trip(tmp_path):
    ids, emb = _table()
    p = save_embeddings(tmp_path / "e.parquet", ids, emb, {"item_feature": "movie", "source": "sasrec"})
    ids2, emb2 = load_embeddings(p, expected_dim=4, expected_ids=7)
    np.testing.assert_array_equal(ids2, ids)
    np.testing.assert_array_equal(emb2, emb)
    assert emb2.dtype == np.float32 and ids2.dtype == np.int64
    assert read_metadata(p) == {"item_feature": "movie", "source": "sasrec", "dim": 4}
    assert not [x for x in tmp_path.iterdir() if x.name.endswith(".tmp")]


@pytest.mark.parametrize("id_format", ["npy", "txt", None])
def test_npy_round_trip(tmp_path, id_format):
    ids, emb = _table()
    np.save(tmp_path / "e.npy", emb.astype(np.float64))
    ids_path = None
    if id_format == "npy":
        ids_path = tmp_path / "ids.npy"
        np.save(ids_path, ids)
    elif id_format == "txt":
        ids_path = tmp_path / "ids.txt"
        ids_path.write_text("\n".join(map(str, ids)) + "\n")
    ids2, emb2 = load_embeddings(tmp_path / "e.npy", ids_path=ids_path, expected_dim=4)
    np.testing.assert_array_equal(ids2, ids if id_format else np.arange(6))
    np.testing.assert_allclose(emb2, emb)


def test_dimension_mismatch(tmp_path):
    ids, emb = _table()
    p = save_embeddings(tmp_path / "e.parquet", ids, emb)
    with pytest.raises(DataError, match="dimension 4 != expected 8"):
        load_embeddings(p, expected_dim=8)


def test_duplicate_ids(tmp_path):
    ids, emb = _table()
    ids[3] = ids[0]
    np.save(tmp_path / "e.npy", emb)
    np.save(tmp_path / "ids.npy", ids)
    with pytest.raises(DataError, match=f"duplicate id {ids[0]} \\(rows \\[0, 3\\]\\)"):
        load_embeddings(tmp_path / "e.npy", ids_path=tmp_path / "ids.npy")
    with pytest.raises(DataError, match="duplicate id"):
        save_embeddings(tmp_path / "e.parquet", ids, emb)


def test_missing_ids(tmp_path):
    ids, emb = _table()
    p = save_embeddings(tmp_path / "e.parquet", ids, emb)
    with pytest.raises(DataError, match=r"2 expected ids have no embedding, e.g. \[7, 8\]"):
        load_embeddings(p, expected_ids=9)
    with pytest.raises(DataError, match=r"e.g. \[42\]"):
        load_embeddings(p, expected_ids=[1, 2, 42])
    with pytest.raises(DataError, match="id 6 outside the vocabulary"):
        load_embeddings(p, expected_ids=6)


@pytest.mark.parametrize("bad,kind", [(np.nan, "NaN"), (np.inf, "inf")])
def test_non_finite_names_the_id(tmp_path, bad, kind):
    ids, emb = _table()
    emb[2, 1] = bad
    np.save(tmp_path / "e.npy", emb)
    np.save(tmp_path / "ids.npy", ids)
    with pytest.raises(DataError, match=f"{kind} in embedding of id {ids[2]} \\(row 2\\)"):
        load_embeddings(tmp_path / "e.npy", ids_path=tmp_path / "ids.npy")


def test_wrong_shapes_and_files(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros(5, dtype=np.float32))
    with pytest.raises(DataError, match=r"2-D \[N, d\], got shape \(5,\)"):
        load_embeddings(tmp_path / "v.npy")
    np.save(tmp_path / "e.npy", np.zeros((5, 4), dtype=np.float32))
    (tmp_path / "ids.txt").write_text("1\n2\n3\n")
    with pytest.raises(DataError, match="3 ids for 5 embedding rows"):
        load_embeddings(tmp_path / "e.npy", ids_path=tmp_path / "ids.txt")
    (tmp_path / "ids.txt").write_text("1\nx\n")
    with pytest.raises(DataError, match="line 2: 'x' is not an integer id"):
        load_embeddings(tmp_path / "e.npy", ids_path=tmp_path / "ids.txt")
    np.save(tmp_path / "i.npy", np.zeros((5, 4), dtype=np.int64))
    with pytest.raises(DataError, match="floating point"):
        load_embeddings(tmp_path / "i.npy")
    (tmp_path / "e.csv").write_text("1,2\n")
    with pytest.raises(DataError, match="unknown embedding format"):
        load_embeddings(tmp_path / "e.csv")
    with pytest.raises(FileNotFoundError):
        load_embeddings(tmp_path / "nope.parquet")


def test_ragged_parquet_list(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"item": [1, 2], "embedding": [[0.0, 1.0], [1.0]]}), tmp_path / "r.parquet")
    with pytest.raises(DataError, match="row 1 \\(id 2\\) has an embedding of length 1"):
        load_embeddings(tmp_path / "r.parquet")


def test_load_item_embeddings_checks(tmp_path):
    from store_rec.errors import UserError
    from store_rec.tokenizer.embeddings import load_item_embeddings

    ids, emb = _table()
    np.save(tmp_path / "e.npy", emb)
    with pytest.raises(UserError, match="carries no item ids"):
        load_item_embeddings(tmp_path / "e.npy")
    got, e2, feat = load_item_embeddings(tmp_path / "e.npy", positional_ids=1)
    np.testing.assert_array_equal(got, np.arange(1, 7))
    assert feat == "item" and e2.shape == (6, 4)
    got, e2, _ = load_item_embeddings(tmp_path / "e.npy", positional_ids=0)  # row 0 = OOV row, dropped
    np.testing.assert_array_equal(got, np.arange(1, 6))
    np.testing.assert_array_equal(e2, emb[1:])
    np.save(tmp_path / "ids.npy", ids)
    with pytest.raises(UserError, match="either an id file"):
        load_item_embeddings(tmp_path / "e.npy", ids_path=tmp_path / "ids.npy", positional_ids=1)
    p = save_embeddings(tmp_path / "e.parquet", ids, emb, {"item_feature": "movie"})
    got, _, feat = load_item_embeddings(p, expected_dim=4)
    np.testing.assert_array_equal(got, ids)
    assert feat == "movie"
    with pytest.raises(DataError, match="metadata dim 4 != expected dimension 8"):
        load_item_embeddings(p, expected_dim=8)
    np.testing.assert_array_equal(load_embeddings(tmp_path / "e.npy", first_id=10)[0], np.arange(10, 16))
