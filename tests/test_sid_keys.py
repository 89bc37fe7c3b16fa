"""SID embedding schemes (store_rec.data.sid_keys, data.sid_embedding): the ids of a hand-built
SID table for position / prefix_ngram / tuple_hash, exact and hashed, always inside their tables;
the loader attaches them (keys, vocab sizes, values); every model builds on the keys it is given."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from store_rec.data.sid_keys import sid_key_ids, sid_key_shapes

# K = 3 positions, C = 3 (codes 0..2 plus the OOV code 3): items A (1, 2, 0), B (1, 2, 2), D (0, 1, 2), OOV
CODES = np.array([[1, 1, 0, 3], [2, 2, 1, 3], [0, 2, 2, 3]])  # [K, items]
NAMES = ["sid_0", "sid_1", "sid_2"]


def test_position_is_the_codes():
    assert sid_key_shapes(NAMES, 3, "position") == (NAMES, [4, 4, 4])
    assert (sid_key_ids(CODES, 3, "position") == CODES).all()


def test_prefix_ngram_ids_by_hand():
    names, sizes = sid_key_shapes(NAMES, 3, "prefix_ngram")
    assert names == NAMES and sizes == [4, 16, 64]
    got = sid_key_ids(CODES, 3, "prefix_ngram")
    # base C + 1 = 4: (s0), s0*4+s1, (s0*4+s1)*4+s2
    assert got.tolist() == [[1, 1, 0, 3],
                            [1 * 4 + 2, 1 * 4 + 2, 0 * 4 + 1, 3 * 4 + 3],
                            [6 * 4 + 0, 6 * 4 + 2, 1 * 4 + 2, 15 * 4 + 3]]


def test_tuple_hash_is_positions_plus_the_full_tuple():
    names, sizes = sid_key_shapes(NAMES, 3, "tuple_hash")
    assert names == [*NAMES, "sid_tuple"] and sizes == [4, 4, 4, 64]
    got = sid_key_ids(CODES, 3, "tuple_hash")
    assert (got[:3] == CODES).all() and got[3].tolist() == [24, 26, 6, 63]


def test_hashed_prefixes_stay_in_range_and_collide_only_on_equal_prefixes():
    r = np.random.default_rng(0)
    codes = r.integers(0, 257, size=(4, 5000))  # C = 256: 257^4 > 1000 buckets -> hashed beyond the first
    names, sizes = sid_key_shapes(["sid_0", "sid_1", "sid_2", "sid_3"], 256, "prefix_ngram", buckets=1000)
    assert sizes == [257, 1000, 1000, 1000]
    got = sid_key_ids(codes, 256, "prefix_ngram", buckets=1000)
    assert got.shape == (4, 5000) and got.dtype == np.int64
    for k, size in enumerate(sizes):
        assert 0 <= got[k].min() and got[k].max() < size
    assert (got[0] == codes[0]).all()
    # equal prefixes -> equal ids (items 0 and 1 made to share (s0, s1))
    codes[:2, 1] = codes[:2, 0]
    again = sid_key_ids(codes, 256, "prefix_ngram", buckets=1000)
    assert again[1, 0] == again[1, 1] and (again[:, 2:] == got[:, 2:]).all()  # deterministic
    # ~uniform over the buckets: 5000 distinct prefixes fill most of 1000 buckets
    assert len(np.unique(got[3])) > 950
    with pytest.raises(ValueError, match="sid_embedding"):
        sid_key_shapes(NAMES, 3, "ngram")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from store_rec.data.sid_table import write_sid_table
    from store_rec.data.synthetic import prepare_synthetic

    d = tmp_path_factory.mktemp("sidkeys")
    s = prepare_synthetic(d / "data", rows=600, items=40, users=30, seed=0, num_clusters=4)
    n = s.feature("item_id").vocab_size
    ids = np.arange(1, n - 3)  # the last 3 items (and OOV id 0) have no SID row: OOV SID
    codes = np.random.default_rng(0).integers(0, 3, size=(len(ids), 3))
    write_sid_table(d / "sids.parquet", ids, codes, method="opmq", codebook_size=3, item_feature="item_id")
    return d, ids, codes


@pytest.mark.parametrize("scheme", ["position", "prefix_ngram", "tuple_hash"])
def test_loader_attaches_the_scheme_and_models_build_on_it(tiny, scheme):
    from store_rec.data.loader import ParquetBatchLoader, schema_with_sids
    from store_rec.data.schema import DatasetSchema
    from store_rec.models.config import ModelConfig
    from store_rec.models.factory import build_model

    d, ids, codes = tiny
    ld = ParquetBatchLoader(d / "data", "train", 64, sid_table=d / "sids.parquet", sid_embedding=scheme)
    names, sizes = sid_key_shapes(NAMES, 3, scheme)
    assert ld.keys[-len(names):] == names
    assert [ld.schema.feature(n).vocab_size for n in names] == sizes
    assert ld.schema.params["sid_embedding"] == scheme
    # the same schema without a loader (store-rec plan)
    s2 = schema_with_sids(DatasetSchema.load(d / "data"), d / "sids.parquet", sid_embedding=scheme)
    assert [s2.feature(n).vocab_size for n in names] == sizes
    full = np.full((3, ld.schema.feature("item_id").vocab_size), 3, np.int64)
    full[:, ids] = codes.T
    want = sid_key_ids(full, 3, scheme)
    b = next(iter(ld))
    item = b.sparse_features["item_id"].values().numpy()
    for k, n in enumerate(names):
        v = b.sparse_features[n].values().numpy()
        assert (v == want[k, item]).all() and v.max() < sizes[k]
    for name in ("store", "dlrm"):
        cfg = ModelConfig(name=name, tokenizer="opmq", item_feature="item_id", embedding_dim=8)
        m = build_model(cfg, ld.schema)
        tables = {c.feature_names[0]: c.num_embeddings for c in m.embedding_bag_collection.embedding_bag_configs()}
        assert all(tables[n] == sz for n, sz in zip(names, sizes))
        with torch.no_grad():
            out = m(b)
        assert out.logits.shape == (len(b.labels),) and torch.isfinite(out.logits).all()
