"""Semantic tokenizers: OPMQ math, VQ machinery, baselines, SID table, CLI, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _sid_utils import read_sids as read_sid_table

from store_rec.config import ConfigError
from store_rec.errors import UserError
from store_rec.tokenizer import OPMQ, OPQ, RQVAE, OPMQConfig, TrainConfig, fit_tokenizer
from store_rec.tokenizer.opmq import orthogonality_error
from store_rec.tokenizer.quantizer import VectorQuantizer
from store_rec.tokenizer.report import code_stats, dedup_tokens, finish_partials, partial_stats, tokenizer_report
from store_rec.data.sid_table import write_sid_table


def clustered(n=2000, d=16, k=8, noise=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    cent = torch.randn(k, d, generator=g) * 3
    lab = torch.randint(k, (n,), generator=g)
    return cent[lab] + noise * torch.randn(n, d, generator=g), lab


def test_straight_through_gradient_equals_unquantized_path():
    m = OPMQ(8, 2, 4, hidden_dims=[16], latent_dim=4, orth_weight=0.0)
    m.eval()  # no EMA update: codebook fixed
    x = torch.randn(10, 8)
    z = m.experts_forward(x).detach().requires_grad_(True)
    q, codes, _ = m._quantize(z)
    m.decoder(q.sum(1)).pow(2).sum().backward()
    g_st = z.grad.clone()
    s = m.quantizer.lookup(codes).detach()
    # un-quantized path evaluated at the codewords: d/dz of decoder(sum(z')) at z' = s
    z2 = s.clone().requires_grad_(True)
    m.decoder(z2.sum(1)).pow(2).sum().backward()
    assert g_st.abs().sum() > 0
    torch.testing.assert_close(g_st, z2.grad, atol=1e-6, rtol=1e-5)
    # and the full forward sends gradients to every expert and the decoder
    m.train()
    out = m(x)
    sum(out.losses.values()).backward()
    for p in list(m.experts.parameters()) + list(m.decoder.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("hidden", [[], [16], [16, 12]])
def test_fused_experts_match_reference(hidden):
    m = OPMQ(8, 3, 4, hidden_dims=hidden, latent_dim=5)
    x = torch.randn(7, 8)
    torch.testing.assert_close(m.experts_forward_fused(x), m.experts_forward(x), atol=1e-5, rtol=1e-5)


def _reference_codes(m, x):
    """The pre-optimisation encode: module-by-module experts, then the quantizer's batched nearest."""
    with torch.no_grad():
        z = m.experts_forward(x)
        if m.shared_codebook:
            n, k, e = z.shape
            return m.quantizer.nearest(z.reshape(n * k, 1, e)).reshape(n, k), z
        return m.quantizer.nearest(z), z


@pytest.mark.parametrize("kw", [{}, {"hidden_dims": []}, {"hidden_dims": [48, 24]}, {"shared_codebook": True}])
def test_fast_encode_matches_reference(kw):
    torch.manual_seed(1)
    m = OPMQ(64, 3, 16, seed=3, **kw).eval()
    x = torch.randn(5000, 64)
    ref, z = _reference_codes(m, x)
    torch.testing.assert_close(m.experts_forward_fused(x), z, atol=1e-6, rtol=0)
    for bs in (None, 777, 5000):  # default (memory-budgeted), ragged last batch, one batch
        codes = m.encode(x, batch_size=bs)
        assert codes.dtype == torch.long and codes.shape == (5000, 3)
        # measured: bit-identical codes; allow only genuine near-ties should a BLAS reorder sums
        diff = (codes != ref).any(1)
        assert int(diff.sum()) <= 1, int(diff.sum())
    torch.testing.assert_close(m._encode(x[:10]), ref[:10], atol=0, rtol=0)


def test_encode_is_memory_bounded_and_batches_agree():
    m = OPMQ(64, 32, 300).eval()  # the case that took ~11 GB at batch 262144 ([N, K, C] distances)
    bs = m.encode_batch_size()
    assert bs == 1024 and bs * m.encode_bytes_per_row() < 64 * 2 ** 20  # ~58 MiB working set
    assert OPMQ(64, 3, 16).encode_batch_size() == 3927  # 8 MiB / 2136 bytes per row
    x = torch.randn(2500, 64)
    full = m.encode(x, batch_size=2500)
    torch.testing.assert_close(m.encode(x), full, atol=0, rtol=0)
    rq = RQVAE(64, 3, 16).eval()
    torch.testing.assert_close(rq.encode(x, batch_size=700), rq._encode(x), atol=0, rtol=0)
    opq = OPQ(64, 4, 16)
    opq.fit(x[:500], outer_iters=1)
    torch.testing.assert_close(opq.encode(x, batch_size=700), opq._encode(x), atol=0, rtol=0)


def test_empty_encode_and_bad_decode():
    for m in (OPMQ(8, 3, 4), RQVAE(8, 3, 4), OPQ(8, 2, 4)):
        e = m.encode(torch.zeros(0, 8))
        assert e.shape == (0, m.num_sids) and e.dtype == torch.long
        assert m.decode(e).shape == (0, 8)
        ok = torch.zeros(2, m.num_sids, dtype=torch.long)
        assert m.decode(ok).shape == (2, 8)
        oov = ok.clone()
        oov[1, 1] = 4
        with pytest.raises(UserError, match=r"row 1, sid_1 = 4 is the OOV SID \(C = 4\).*cannot be decoded"):
            m.decode(oov)
        neg = ok.clone()
        neg[0, 0] = -1
        with pytest.raises(UserError, match=r"row 0, sid_0 = -1 outside \[0, 4\)"):
            m.decode(neg)
        big = ok.clone()
        big[1, 0] = 9
        with pytest.raises(UserError, match=r"sid_0 = 9 outside \[0, 4\)"):
            m.decode(big)
        with pytest.raises(UserError, match=r"expected LongTensor\[N, K=%d\]" % m.num_sids):
            m.decode(torch.zeros(2, m.num_sids + 1, dtype=torch.long))
        with pytest.raises(UserError, match="integer tensor"):
            m.decode(ok.float())


def test_codebook_larger_than_items_and_zero_dims():
    x, _ = clustered(n=20, d=8, k=4)
    for m in (OPMQ(8, 2, 32), RQVAE(8, 2, 32)):
        with pytest.raises(UserError, match="codebook_size C=32 > number of training items 20"):
            fit_tokenizer(m, x, TrainConfig(steps=1))
    with pytest.raises(UserError, match="codebook_size C=32 > number of training items 20"):
        OPQ(8, 2, 32).fit(x)
    with pytest.warns(UserWarning, match="batch_size 16 < codebook_size 18"):
        fit_tokenizer(OPMQ(8, 2, 18), x, TrainConfig(steps=1, batch_size=16))
    for cls in (OPMQ, RQVAE, OPQ):
        with pytest.raises(ConfigError, match="input_dim: must be > 0, got 0"):
            cls(0, 2, 4)


def test_report_from_partials_matches_direct():
    x, _ = clustered(n=600, d=16, k=8)
    m = OPMQ(16, 2, 8, hidden_dims=[16], latent_dim=8)
    fit_tokenizer(m, x, TrainConfig(steps=30, batch_size=128))
    codes = m.encode(x)
    rep = tokenizer_report(m, x)
    assert rep["encode_seconds"] > 0 and rep["encode_items_per_s"] > 0  # measured, not precomputed
    assert tokenizer_report(m, x, codes)["encode_seconds"] is None  # precomputed without a time: not 0
    r = m.decode(codes)
    assert rep["recon_mse"] == pytest.approx(float(((r - x) ** 2).mean()), rel=1e-5)
    assert rep["data_variance"] == pytest.approx(float(x.var(0).mean()), rel=1e-5)
    # two shards' partials summed == the whole table's (what the distributed tokenizer all-reduces)
    p1, p2 = partial_stats(m, x[:250], codes[:250]), partial_stats(m, x[250:], codes[250:])
    whole = finish_partials({k: p1[k] + p2[k] for k in p1})
    direct = finish_partials(partial_stats(m, x, codes))
    for key in ("recon_mse", "recon_cosine", "data_variance"):
        assert whole[key] == pytest.approx(direct[key], rel=1e-9)
    assert whole["utilization"] == direct["utilization"] == code_stats(codes.numpy(), 8)["utilization"]
    assert whole["perplexity"] == pytest.approx(code_stats(codes.numpy(), 8)["perplexity"])


def test_orthogonality_error_values():
    e1, e2 = torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        e1.weight.copy_(torch.tensor([[1.0, 0.0]]))
        e2.weight.copy_(torch.tensor([[0.0, 3.0]]))
    assert orthogonality_error([e1, e2]).item() < 1e-6
    with torch.no_grad():
        e2.weight.copy_(torch.tensor([[1.0, 1.0]]))  # cos = 1/sqrt(2): off-diagonals 0.5 each squared
    assert orthogonality_error([e1, e2]).item() == pytest.approx(1.0, abs=1e-6)


def test_kmeans_init_beats_random_init():
    x, _ = clustered(n=1500, d=8, k=16, noise=0.05)
    res = {}
    for init in (True, False):
        vq = VectorQuantizer(1, 16, 8, kmeans_init=init, dead_code_steps=0, seed=0)
        vq.train()
        for _ in range(20):
            vq(x[:, None, :])
        vq.eval()
        codes = vq.nearest(x[:, None, :])
        err = float(((vq.lookup(codes)[:, 0] - x) ** 2).sum(1).mean())
        res[init] = (err, len(codes.unique()))
    assert res[True][0] < 0.5 * res[False][0]
    assert res[True][1] >= res[False][1]


def test_planted_clusters_share_first_sid():
    x, lab = clustered(n=1500, d=16, k=8)
    m = OPMQ(16, 2, 8, hidden_dims=[32], latent_dim=8)
    fit_tokenizer(m, x, TrainConfig(steps=150, batch_size=256))
    codes = m.encode(x)
    same = lab[:, None] == lab[None, :]
    share = codes[:, None, 0] == codes[None, :, 0]
    p_same = float(share[same].float().mean())
    p_diff = float(share[~same].float().mean())
    assert p_same > 0.9 and p_diff < 0.3


@pytest.mark.parametrize("update", ["ema", "loss"])
def test_ema_and_loss_variants_train(update):
    x, _ = clustered(n=1000, d=16, k=8)
    m = OPMQ(16, 2, 8, hidden_dims=[32], latent_dim=8, codebook_update=update)
    h = fit_tokenizer(m, x, TrainConfig(steps=150, batch_size=256, lr=3e-3), log_every=10)
    # measured: ema 162 -> 1.0, loss 162 -> 44 (the codebook-loss variant learns slower: why EMA is default)
    assert h["recon"][-1] < (0.05 if update == "ema" else 0.5) * h["recon"][0]
    if update == "loss":
        assert m.quantizer.codebook.requires_grad and "codebook" in h


def test_dead_code_restart_raises_utilization():
    x, _ = clustered(n=1000, d=4, k=16, noise=0.1)
    used = {}
    for steps in (0, 5):
        vq = VectorQuantizer(1, 16, 4, kmeans_init=False, dead_code_steps=steps, seed=0)
        with torch.no_grad():
            vq.codebook.data[:] = 100.0  # collapsed: every code far away and identical
            vq.ema_sum.data[:] = 100.0
        vq.train()
        for _ in range(40):
            vq(x[:, None, :])
        used[steps] = len(vq.nearest(x[:, None, :]).unique())
    assert used[0] == 1 and used[5] >= 12


def test_rqvae_and_opq_round_trip():
    x, _ = clustered(n=1500, d=16, k=8)
    var = float(x.var(0).sum())
    rq = RQVAE(16, 3, 16, hidden_dims=[32], latent_dim=8)
    fit_tokenizer(rq, x, TrainConfig(steps=200, batch_size=256))
    err = float(((rq.decode(rq.encode(x)) - x) ** 2).sum(1).mean())
    assert err < 0.1 * var
    opq = OPQ(16, 4, 16)
    opq.fit(x, outer_iters=5)
    err = float(((opq.decode(opq.encode(x)) - x) ** 2).sum(1).mean())
    assert err < 0.1 * var
    r = opq.rotation
    torch.testing.assert_close(r @ r.t(), torch.eye(16), atol=1e-5, rtol=0)
    padded = OPQ(16, 3, 16)  # 16 -> 18 dims, zero-padded
    padded.fit(x, outer_iters=3)
    rec = padded.decode(padded.encode(x))
    assert rec.shape == (1500, 16) and float(((rec - x) ** 2).sum(1).mean()) < 0.1 * var


def test_dedup_and_sid_table_round_trip(tmp_path):
    codes = np.array([[1, 2], [1, 2], [0, 0], [1, 2], [0, 0], [3, 3]])
    np.testing.assert_array_equal(dedup_tokens(codes), [0, 1, 0, 2, 1, 0])
    ids = np.arange(10, 16)
    p = write_sid_table(tmp_path / "s.parquet", ids, codes, method="opmq", codebook_size=4, dedup=True)
    rid, rcodes, dd, meta = read_sid_table(p)
    np.testing.assert_array_equal(rid, ids)
    np.testing.assert_array_equal(rcodes, codes)
    assert len({(*c, t) for c, t in zip(rcodes.tolist(), dd.tolist())}) == 6
    assert meta == {"method": "opmq", "num_sids": 2, "codebook_size": 4, "item_feature": "item"}
    st = code_stats(codes, 4)
    assert st["largest_collision_group"] == 3 and st["collided_items"] == 5 and st["unique_tuple_rate"] == 0.5


def test_bad_inputs():
    with pytest.raises(ConfigError, match="num_sids"):
        OPMQConfig(num_sids=0)
    with pytest.raises(ConfigError, match="codebook_size"):
        OPMQ(8, 2, 0)
    with pytest.raises(ConfigError, match="divisible"):
        OPQ(10, 3, 4, pad=False)
    m = OPMQ(8, 2, 4)
    with pytest.raises(UserError, match="dimension 6 != tokenizer input_dim 8"):
        m.encode(torch.randn(3, 6))
    x = torch.randn(5, 8)
    x[3, 1] = float("nan")
    with pytest.raises(UserError, match="row 3"):
        m.encode(x)
    with pytest.raises(UserError, match="row 3"):
        fit_tokenizer(m, x, TrainConfig(steps=1))


def _write_emb(path, n=300, d=16):
    from store_rec.tokenizer.embeddings import save_embeddings
    x, _ = clustered(n=n, d=d, k=8)
    save_embeddings(path, np.arange(1, n + 1, dtype=np.int64), x.numpy(), {"dim": d, "item_feature": "movie"})


@pytest.mark.parametrize("method", ["opmq", "rqvae", "opq"])
def test_cli_end_to_end(tmp_path, method, capsys):
    from store_rec.cli import main
    _write_emb(tmp_path / "emb.parquet")
    rc = main(["tokenize", "--embeddings", str(tmp_path / "emb.parquet"), "--method", method, "--num-sids", "2",
               "--codebook-size", "8", "--out", str(tmp_path / "s.parquet"), "--report", str(tmp_path / "r.json"),
               "--steps", "30", "--dedup"])
    assert rc == 0 and "tokenize" in capsys.readouterr().out
    ids, codes, dd, meta = read_sid_table(tmp_path / "s.parquet")
    assert codes.shape == (300, 2) and meta["item_feature"] == "movie" and meta["method"] == method
    np.testing.assert_array_equal(ids, np.arange(1, 301))
    rep = json.loads((tmp_path / "r.json").read_text())
    for key in ("recon_mse", "recon_cosine", "utilization", "perplexity", "unique_tuple_rate",
                "largest_collision_group", "collided_items", "tuple_space", "train_seconds"):
        assert key in rep
    assert rep["tuple_space"] == 64.0


def test_cli_codebook_larger_than_items(tmp_path):
    from store_rec.cli import main
    _write_emb(tmp_path / "emb.parquet", n=20)
    rc = main(["tokenize", "--embeddings", str(tmp_path / "emb.parquet"), "--num-sids", "2",
               "--codebook-size", "64", "--out", str(tmp_path / "s.parquet")])
    assert rc == 2 and not (tmp_path / "s.parquet").exists()


def _tokenize(tmp_path, *extra):
    from store_rec.cli import main
    return main(["tokenize", "--num-sids", "2", "--codebook-size", "8", "--steps", "20",
                 "--out", str(tmp_path / "s.parquet"), "--report", str(tmp_path / "r.json"), *extra])


def test_cli_npy_needs_ids(tmp_path, capsys):
    x, _ = clustered(n=100, d=16, k=8)
    np.save(tmp_path / "e.npy", x.numpy())
    assert _tokenize(tmp_path, "--embeddings", str(tmp_path / "e.npy")) == 2
    assert "carries no item ids; pass --ids FILE" in capsys.readouterr().err
    ids = np.arange(1000, 1100)
    (tmp_path / "ids.txt").write_text("\n".join(map(str, ids)) + "\n")
    assert _tokenize(tmp_path, "--embeddings", str(tmp_path / "e.npy"), "--ids", str(tmp_path / "ids.txt"),
                     "--dim", "16") == 0
    rid, codes, _, _ = read_sid_table(tmp_path / "s.parquet")
    np.testing.assert_array_equal(rid, ids)
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["num_items"] == 100 and rep["encode_seconds"] > 0
    # --positional-ids 0: row 0 is the OOV id and is not tokenized; 1: rows are items 1..N
    assert _tokenize(tmp_path, "--embeddings", str(tmp_path / "e.npy"), "--positional-ids", "0") == 0
    np.testing.assert_array_equal(read_sid_table(tmp_path / "s.parquet")[0], np.arange(1, 100))
    assert _tokenize(tmp_path, "--embeddings", str(tmp_path / "e.npy"), "--positional-ids", "1") == 0
    np.testing.assert_array_equal(read_sid_table(tmp_path / "s.parquet")[0], np.arange(1, 101))


def test_cli_validation_errors(tmp_path, capsys):
    x, _ = clustered(n=100, d=16, k=8)
    np.save(tmp_path / "e.npy", x.numpy())
    ids = np.arange(1, 101)
    ids[5] = ids[4]
    np.save(tmp_path / "dup.npy", ids)
    assert _tokenize(tmp_path, "--embeddings", str(tmp_path / "e.npy"), "--ids", str(tmp_path / "dup.npy")) == 2
    assert "duplicate id 5 (rows [4, 5])" in capsys.readouterr().err
    np.save(tmp_path / "zero.npy", np.arange(0, 100))
    assert _tokenize(tmp_path, "--embeddings", str(tmp_path / "e.npy"), "--ids", str(tmp_path / "zero.npy")) == 2
    assert "row 0 has id 0; item ids must be >= 1 (0 is the OOV id" in capsys.readouterr().err
    assert _tokenize(tmp_path, "--embeddings", str(tmp_path / "e.npy"), "--positional-ids", "1", "--dim", "32") == 2
    assert "embedding dimension 16 != expected 32" in capsys.readouterr().err
    _write_emb(tmp_path / "emb.parquet", n=100)
    assert _tokenize(tmp_path, "--embeddings", str(tmp_path / "emb.parquet"), "--ids", str(tmp_path / "zero.npy")) == 2
    assert "only apply to .npy embeddings" in capsys.readouterr().err
    # --data: every item of the dataset's item vocabulary (ids 1..vocab_size-1) must have an embedding
    from store_rec.data.schema import DatasetSchema, SparseFeature
    DatasetSchema(dataset="t", label="label", sparse=[SparseFeature(name="movie", role="id", vocab_size=104,
                                                                    vocab_file="vocab/movie.parquet")]).save(tmp_path)
    assert _tokenize(tmp_path, "--embeddings", str(tmp_path / "emb.parquet"), "--data", str(tmp_path)) == 2
    assert "3 expected ids have no embedding, e.g. [101, 102, 103]" in capsys.readouterr().err
    assert _tokenize(tmp_path, "--embeddings", str(tmp_path / "emb.parquet"), "--data", str(tmp_path),
                     "--item-feature", "site") == 2
    assert "no sparse feature 'site'" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("model:\n  latent_dim: 0\n")
    assert _tokenize(tmp_path, "--embeddings", str(tmp_path / "emb.parquet"), "--config", str(tmp_path / "bad.yaml")) == 2
    assert "bad.yaml: model.latent_dim: must be > 0" in capsys.readouterr().err


def test_cli_config_file_errors_name_the_file(tmp_path, capsys):
    """``tokenize --config``: a missing file, bad YAML or a non-mapping exit 2 with the file named."""
    _write_emb(tmp_path / "emb.parquet", n=100)
    emb = str(tmp_path / "emb.parquet")
    missing = tmp_path / "missing.yaml"
    assert _tokenize(tmp_path, "--embeddings", emb, "--config", str(missing)) == 2
    assert f"{missing}: config file not found" in capsys.readouterr().err
    (tmp_path / "broken.yaml").write_text("model: [unclosed\n")
    assert _tokenize(tmp_path, "--embeddings", emb, "--config", str(tmp_path / "broken.yaml")) == 2
    assert f"{tmp_path / 'broken.yaml'}: not valid YAML" in capsys.readouterr().err
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    assert _tokenize(tmp_path, "--embeddings", emb, "--config", str(tmp_path / "list.yaml")) == 2
    assert f"{tmp_path / 'list.yaml'}: top level must be a mapping" in capsys.readouterr().err
    assert not (tmp_path / "s.parquet").exists()


@pytest.mark.parametrize("method", ["opmq", "opq"])
def test_tokenize_save_model_round_trip(tmp_path, method):
    """``--save-model`` writes the tokenizer that ``model.online.tokenizer`` loads: same codes as the table."""
    import numpy as np

    from store_rec.cli import main
    from store_rec.tokenizer.embeddings import save_embeddings
    from store_rec.tokenizer.online import load_tokenizer

    rng = np.random.default_rng(0)
    ids = np.arange(1, 201, dtype=np.int64)
    emb = rng.normal(size=(200, 16)).astype(np.float32)
    save_embeddings(tmp_path / "emb.parquet", ids, emb, {"dim": 16, "item_feature": "item"})
    assert main(["tokenize", "--embeddings", str(tmp_path / "emb.parquet"), "--method", method, "--num-sids", "2",
                 "--codebook-size", "8", "--steps", "40", "--out", str(tmp_path / "sids.parquet"),
                 "--save-model", str(tmp_path / "tok.pt")]) == 0
    tok, m = load_tokenizer(tmp_path / "tok.pt")
    t_ids, t_codes, _, _ = read_sid_table(tmp_path / "sids.parquet")
    assert m == method and np.array_equal(t_ids, ids)
    assert np.array_equal(tok.encode(torch.from_numpy(emb)).numpy(), t_codes)

