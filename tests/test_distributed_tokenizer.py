"""2-rank gloo tests: sharded-EBC pre-trained load/read, offline distributed OPMQ, online SID module."""

from __future__ import annotations


import numpy as np
import pytest
import torch


def _launch(fn, *args):
    from store_rec.distributed.local_launch import launch_local

    return launch_local(fn, args, nproc=2)


# ------------------------------------------------------------------ sharded EBC load / read back

ROWS, DIM = 101, 16


def _pretrained():
    rng = np.random.default_rng(3)
    ids = rng.permutation(np.arange(1, ROWS))  # every item row except OOV row 0, shuffled order
    return ids.astype(np.int64), rng.normal(size=(len(ids), DIM)).astype(np.float32)


def _ebc_worker(sharding_type: str):
    import torch.distributed as dist
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.distributed.types import ShardingEnv
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from store_rec.distributed.embedding_io import load_pretrained_into_ebc, read_table_from_ebc

    dist.init_process_group("gloo")
    try:
        tables = [EmbeddingBagConfig(name="t_item", embedding_dim=DIM, num_embeddings=ROWS, feature_names=["item"]),
                  EmbeddingBagConfig(name="t_site", embedding_dim=8, num_embeddings=20, feature_names=["site"])]
        cons = {t.name: ParameterConstraints(sharding_types=[sharding_type], min_partition=DIM // 2) for t in tables}
        sharder = EmbeddingBagCollectionSharder()
        ebc = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
        planner = EmbeddingShardingPlanner(topology=Topology(world_size=2, compute_device="cpu"), constraints=cons)
        plan = planner.collective_plan(ebc, [sharder], dist.group.WORLD)
        dmp = DistributedModelParallel(ebc, env=ShardingEnv.from_process_group(dist.group.WORLD),
                                       device=torch.device("cpu"), plan=plan, sharders=[sharder])
        ids, emb = _pretrained()
        before_site = read_table_from_ebc(dmp, "t_site")
        written = load_pretrained_into_ebc(dmp, "t_item", ids, emb)
        full = read_table_from_ebc(dmp, "t_item")
        on0 = read_table_from_ebc(dmp, "t_item", dst=0)
        # the forward uses the loaded rows: samples [item 5, item 17] pool to rows 5 and 17
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=["item", "site"], values=torch.tensor([5, 17, 1, 3]),
                                                  lengths=torch.tensor([1, 1, 1, 1]))
        pooled = dmp(kjt).to_dict()["item"]
        n_shards = [len(v.local_shards()) for k, v in dmp.state_dict().items()
                    if k.endswith("t_item.weight") and hasattr(v, "local_shards")]
        return {"full": full, "on0": on0, "pooled": pooled.detach(), "written": written, "shards": n_shards,
                "site_after": read_table_from_ebc(dmp, "t_site"), "site_before": before_site}
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("sharding_type", ["table_wise", "column_wise"])
def test_sharded_ebc_load_and_read_round_trip(sharding_type):
    out = _launch(_ebc_worker, sharding_type)
    ids, emb = _pretrained()
    want = np.zeros((ROWS, DIM), np.float32)
    want[ids] = emb
    for rank in (0, 1):
        full = out[rank]["full"].numpy()
        np.testing.assert_allclose(full[1:], want[1:], atol=0, rtol=0)
        np.testing.assert_allclose(out[rank]["pooled"].numpy(), want[[5, 17]], atol=1e-6)
        np.testing.assert_array_equal(out[rank]["site_after"].numpy(), out[rank]["site_before"].numpy())
    np.testing.assert_array_equal(out[0]["on0"].numpy(), out[0]["full"].numpy())
    assert out[1]["on0"] is None
    if sharding_type == "column_wise":  # each rank really holds half the columns of every row
        assert out[0]["written"] == out[1]["written"] == ROWS - 1
    else:  # one rank owns the whole table
        assert sorted([out[0]["written"], out[1]["written"]]) == [0, ROWS - 1]


def test_load_errors_on_plain_ebc():
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    from store_rec.distributed.embedding_io import load_pretrained_into_ebc, read_table_from_ebc
    from store_rec.errors import UserError

    ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(name="t_item", embedding_dim=4, num_embeddings=10,
                                                             feature_names=["item"])])
    ids = np.array([3, 1], dtype=np.int64)
    emb = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert load_pretrained_into_ebc(ebc, "t_item", ids, emb) == 2
    np.testing.assert_array_equal(read_table_from_ebc(ebc, "t_item").numpy()[[3, 1]], emb)
    with pytest.raises(UserError, match="not found.*t_item"):
        load_pretrained_into_ebc(ebc, "t_nope", ids, emb)
    with pytest.raises(UserError, match="dimension 3 != table dim 4"):
        load_pretrained_into_ebc(ebc, "t_item", ids, emb[:, :3])
    with pytest.raises(UserError, match="id 10 outside"):
        load_pretrained_into_ebc(ebc, "t_item", np.array([10, 1]), emb)
    with pytest.raises(UserError, match="duplicate"):
        load_pretrained_into_ebc(ebc, "t_item", np.array([1, 1]), emb)
    bad = emb.copy()
    bad[1, 2] = np.nan
    with pytest.raises(UserError, match="id 1 \\(row 1\\)"):
        load_pretrained_into_ebc(ebc, "t_item", ids, bad)


# ------------------------------------------------------------------ tokenizer under test

K, C, D_IN = 2, 8, 8


def _make_tokenizer(dim: int, num_sids: int = K, codebook_size: int = C):
    """OPMQ when the tokenizer module exists (the real thing), else a minimal EMA-VQ stand-in."""
    try:
        from store_rec.tokenizer.opmq import OPMQ
    except ImportError:
        return _StandInVQ(dim, num_sids, codebook_size)
    return OPMQ(input_dim=dim, num_sids=num_sids, codebook_size=codebook_size)


class _StandInVQ(torch.nn.Module):
    """K linear experts, EMA codebooks with all-reduced statistics, linear decoder of the summed codes."""

    def __init__(self, dim, num_sids, codebook_size, latent=4, decay=0.9):
        super().__init__()
        self.input_dim, self.num_sids, self.codebook_size, self.latent_dim = dim, num_sids, codebook_size, latent
        self.experts = torch.nn.Parameter(torch.randn(num_sids, dim, latent) / dim ** 0.5)
        self.decoder = torch.nn.Linear(latent, dim)
        self.register_buffer("codebook", torch.randn(num_sids, codebook_size, latent))
        self.decay = decay

    def _latents(self, x):
        return torch.einsum("nd,kde->nke", x, self.experts)

    def encode(self, x):
        z = self._latents(x)
        return torch.cdist(z.transpose(0, 1), self.codebook).argmin(-1).transpose(0, 1)

    def forward(self, x):
        import types

        import torch.distributed as dist

        z = self._latents(x)
        codes = torch.cdist(z.detach().transpose(0, 1), self.codebook).argmin(-1).transpose(0, 1)
        q = self.codebook[torch.arange(self.num_sids)[None], codes]
        if self.training:
            with torch.no_grad():
                onehot = torch.nn.functional.one_hot(codes, self.codebook_size).float()  # [N, K, C]
                cnt = onehot.sum(0)
                s = torch.einsum("nkc,nke->kce", onehot, z.detach())
                if dist.is_initialized():
                    dist.all_reduce(cnt)
                    dist.all_reduce(s)
                used = cnt > 0
                mean = s / cnt.clamp_min(1)[..., None]
                self.codebook[used] = self.decay * self.codebook[used] + (1 - self.decay) * mean[used]
        qst = z + (q - z).detach()
        recon = self.decoder(qst.sum(1))
        losses = {"recon": ((recon - x) ** 2).mean(), "commit": 0.25 * ((z - q.detach()) ** 2).mean()}
        return types.SimpleNamespace(quantized=qst, codes=codes, losses=losses)


def _fit(model, emb, args):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(int(args.seed))
    model.train()
    for _ in range(int(args.epochs or 2)):
        perm = torch.randperm(len(emb), generator=g)
        for i in range(0, len(emb), int(args.batch_size or 64)):
            out = model(emb[perm[i:i + int(args.batch_size or 64)]])
            loss = sum(out.losses.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {"steps": True}


def _planted_embeddings(n=301, d=D_IN, clusters=6, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, d)) * 3
    lab = rng.integers(clusters, size=n)
    return np.arange(1, n + 1, dtype=np.int64), (centers[lab] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


def _offline_worker(emb_path: str, out: str, report: str, use_default: bool):
    from store_rec.distributed import tokenizer as dt

    args = dt.build_parser().parse_args(["--embeddings", emb_path, "--out", out, "--report", report,
                                         "--num-sids", str(K), "--codebook-size", str(C), "--epochs", "2",
                                         "--batch-size", "32", "--dedup"])
    import torch.distributed as dist

    try:
        if use_default:
            s = dt.run_offline(args)
        else:
            s = dt.run_offline(args, build=lambda d, a: _make_tokenizer(d), fit=_fit)
        return {"sha": s["state_sha256"], "rows": s["rows"], "local_sha": None}
    finally:
        dist.destroy_process_group()


def test_offline_distributed_tokenizer_identical_state_and_complete_table(tmp_path):
    import pyarrow.parquet as pq

    from store_rec.tokenizer.embeddings import save_embeddings

    ids, emb = _planted_embeddings()
    # several row groups so shards read partial row groups
    save_embeddings(tmp_path / "emb.parquet", ids, emb, {"item_feature": "movie", "source": "test"})
    t = pq.read_table(tmp_path / "emb.parquet")
    pq.write_table(t, tmp_path / "emb.parquet", row_group_size=70)
    use_default = _has_opmq()
    out = _launch(_offline_worker, str(tmp_path / "emb.parquet"), str(tmp_path / "sids.parquet"),
                  str(tmp_path / "r.json"), use_default)
    assert out[0]["sha"] == out[1]["sha"]  # identical tokenizer state on both ranks (checked bytewise)
    assert out[0]["rows"] == [0, 151] and out[1]["rows"] == [151, 301]
    sids = pq.read_table(tmp_path / "sids.parquet")
    assert sids.column_names == ["item", "sid_0", "sid_1", "sid_dedup"]
    np.testing.assert_array_equal(np.sort(sids.column("item").to_numpy()), ids)  # every item exactly once
    codes = np.stack([sids.column(f"sid_{k}").to_numpy() for k in range(K)], 1)
    assert codes.min() >= 0 and codes.max() < C
    # dedup token makes (sid_0, sid_1, sid_dedup) unique
    full = np.c_[codes, sids.column("sid_dedup").to_numpy()]
    assert len(np.unique(full, axis=0)) == len(ids)
    import json

    meta = json.loads(pq.read_schema(tmp_path / "sids.parquet").metadata[b"store_rec"])
    assert meta == {"method": "opmq", "num_sids": K, "codebook_size": C, "item_feature": "movie"}
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["distributed"]["world_size"] == 2 and len(set(rep["distributed"]["state_sha256"])) == 1


def _offline_method_worker(emb_path: str, out: str, report: str, method: str, config: str):
    import torch.distributed as dist

    from store_rec.distributed import tokenizer as dt

    args = dt.build_parser().parse_args(["--embeddings", emb_path, "--out", out, "--report", report, "--method", method,
                                         "--num-sids", "3", "--codebook-size", "8", "--config", config,
                                         "--steps", "20", "--seed", "5"])
    try:
        s = dt.run_offline(args)
        return {"sha": s["state_sha256"], "state": {k: v.clone() for k, v in s["tokenizer"].state_dict().items()}}
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("method", ["opmq", "rqvae", "opq"])
def test_offline_methods_config_and_report_from_partials(tmp_path, method):
    """Every method trains data-parallel with the tokenize YAML; the report, built from all-reduced partial
    statistics and gathered codes, equals the single-process report of the same tokenizer."""
    import json

    from store_rec.tokenizer.embeddings import save_embeddings
    from store_rec.tokenizer.report import tokenizer_report
    from _sid_utils import read_sids as read_sid_table
    from store_rec.tokenizer.train import build_tokenizer, load_tokenize_spec

    ids, emb = _planted_embeddings(n=240, d=8)
    save_embeddings(tmp_path / "emb.parquet", ids, emb, {"item_feature": "movie"})
    cfg = tmp_path / "tok.yaml"
    cfg.write_text("model:\n  hidden_dims: [16]\n  latent_dim: 6\n  dead_code_steps: 20\n"
                   "train:\n  batch_size: 32\n  lr: 0.003\nopq:\n  outer_iters: 3\n")
    out = _launch(_offline_method_worker, str(tmp_path / "emb.parquet"), str(tmp_path / "s.parquet"),
                  str(tmp_path / "r.json"), method, str(cfg))
    assert out[0]["sha"] == out[1]["sha"]
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["method"] == method and rep["config"]["train"] == {"batch_size": 32, "lr": 0.003, "steps": 20, "seed": 5}
    assert rep["config"]["model"]["hidden_dims"] == [16]
    rid, codes, _, meta = read_sid_table(tmp_path / "s.parquet")
    np.testing.assert_array_equal(rid, ids)
    assert meta["method"] == method and rep["num_items"] == 240
    # the same tokenizer in this process (rank 0's state): single-process report == distributed report
    spec = load_tokenize_spec(str(cfg), method=method, num_sids=3, codebook_size=8, steps=20, seed=5)
    tok = build_tokenizer(spec, 8)
    assert type(tok).__name__ == {"opmq": "OPMQ", "rqvae": "RQVAE", "opq": "OPQ"}[method]
    tok.load_state_dict(out[0]["state"])
    x = torch.from_numpy(emb)
    np.testing.assert_array_equal(tok.encode(x).numpy(), codes)
    ref = tokenizer_report(tok, x)
    for key in ("recon_mse", "recon_cosine", "data_variance"):
        assert rep[key] == pytest.approx(ref[key], rel=1e-6), key
    for key in ("utilization", "unique_tuple_rate", "largest_collision_group", "collided_items"):
        assert rep[key] == ref[key], key
    assert rep["perplexity"] == pytest.approx(ref["perplexity"], rel=1e-9)
    assert 0 < rep["recon_mse"] < rep["data_variance"]
    assert rep["encode_items_per_s"] > 0 and len(rep["encode_seconds_per_rank"]) == 2


def test_offline_untrained_items_are_left_out_and_counted(tmp_path):
    """As ``store-rec tokenize``: rows that pretrain marked untrained (``trained`` false) get no SID tuple
    (the loader gives them the OOV SID) and the report counts them; the shards are then unequal, and both
    ranks fit on the smaller one's row count."""
    import json

    import pyarrow.parquet as pq

    from store_rec.tokenizer.embeddings import save_embeddings

    ids, emb = _planted_embeddings(n=240, d=8)
    trained = np.ones(len(ids), bool)
    trained[:40] = False  # all in rank 0's shard: 80 trained rows there, 120 on rank 1
    save_embeddings(tmp_path / "emb.parquet", ids, emb, {"item_feature": "movie"}, trained=trained)
    cfg = tmp_path / "tok.yaml"
    cfg.write_text("model:\n  hidden_dims: [16]\n  latent_dim: 6\ntrain:\n  batch_size: 32\n")
    _launch(_offline_method_worker, str(tmp_path / "emb.parquet"), str(tmp_path / "s.parquet"),
            str(tmp_path / "r.json"), "opmq", str(cfg))
    sid_items = pq.read_table(tmp_path / "s.parquet").column("item").to_numpy()
    np.testing.assert_array_equal(np.sort(sid_items), ids[trained])
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["untrained_items"] == rep["oov_sid_items"] == 40 and rep["num_items"] == 200


def test_offline_diverging_fit_is_a_user_error_and_writes_nothing(tmp_path):
    """A non-finite tokenizer loss (``FloatingPointError`` from the training loop) exits as a UserError
    (exit 2 in ``main``) naming the file, not a traceback, and leaves no SID table or report."""
    import torch.distributed as dist

    from store_rec.distributed import tokenizer as dt
    from store_rec.errors import UserError
    from store_rec.tokenizer.embeddings import save_embeddings

    ids, emb = _planted_embeddings(n=60, d=8)
    save_embeddings(tmp_path / "emb.parquet", ids, emb, {"item_feature": "movie"})
    args = dt.build_parser().parse_args(["--embeddings", str(tmp_path / "emb.parquet"), "--out", str(tmp_path / "s.parquet"),
                                         "--report", str(tmp_path / "r.json"), "--num-sids", "2", "--codebook-size", "4"])

    def diverge(model, emb, args):
        raise FloatingPointError("non-finite loss nan at step 0")

    try:
        with pytest.raises(UserError, match=r"emb\.parquet: tokenizer training diverged: non-finite loss nan at step 0"):
            dt.run_offline(args, fit=diverge)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert not (tmp_path / "s.parquet").exists() and not (tmp_path / "r.json").exists()


def _has_opmq() -> bool:
    try:
        import store_rec.tokenizer.opmq  # noqa: F401
        import store_rec.tokenizer.train  # noqa: F401
    except ImportError:
        return False
    return True


def test_shard_range_covers_rows_once():
    from store_rec.distributed.tokenizer import shard_range

    for n in (1, 7, 10, 301):
        for w in (1, 2, 3, 8):
            if n < w:
                continue
            rs = [shard_range(n, r, w) for r in range(w)]
            assert rs[0][0] == 0 and rs[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(rs, rs[1:]))
            sizes = [b - a for a, b in rs]
            assert max(sizes) - min(sizes) <= 1


# ------------------------------------------------------------------ online module


def _online_worker(finetune_steps: int):
    import torch.distributed as dist

    from store_rec.distributed.tokenizer import state_checksum
    from store_rec.tokenizer.online import OnlineSIDTokenizer

    dist.init_process_group("gloo")
    try:
        rank = dist.get_rank()
        torch.manual_seed(0)  # same init on both ranks (as a DDP model would broadcast)
        tok = _make_tokenizer(D_IN)
        online = OnlineSIDTokenizer(tok, ["item", "site"], model_dim=12, token_mode="latent", finetune=True)
        opt = torch.optim.SGD(online.parameters(), lr=0.05)
        world = dist.get_world_size()
        g = torch.Generator().manual_seed(100 + rank)  # different data per rank
        _, emb = _planted_embeddings(n=64, seed=rank)
        for step in range(finetune_steps):
            pooled = torch.from_numpy(emb[:32]).reshape(16, 2, D_IN) + 0.1 * torch.randn(16, 2, D_IN, generator=g)
            tokens, aux = online(pooled)
            loss = tokens.pow(2).mean() + sum(aux.values())
            opt.zero_grad()
            loss.backward()
            for p in online.parameters():  # data-parallel gradient average (what DDP does)
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= world
            opt.step()
        return {"sha": state_checksum(online), "shape": tuple(tokens.shape), "aux": sorted(aux),
                "codes_shape": tuple(online.last_codes.shape)}
    finally:
        dist.destroy_process_group()


def test_online_tokenizer_codebooks_identical_across_ranks():
    out = _launch(_online_worker, 4)
    assert out[0]["sha"] == out[1]["sha"]
    assert out[0]["shape"] == (16, 2 * K, 12)
    assert out[0]["codes_shape"] == (16, 2, K)
    assert out[0]["aux"]


def test_online_tokenizer_shapes_frozen_and_grads():
    from torchrec.sparse.jagged_tensor import KeyedTensor

    from store_rec.tokenizer.online import OnlineSIDTokenizer
    from store_rec.errors import UserError

    torch.manual_seed(0)
    tok = _make_tokenizer(D_IN)
    before = {k: v.clone() for k, v in tok.state_dict().items()}
    online = OnlineSIDTokenizer(tok, ["item", "site"], model_dim=6, token_mode="codes", finetune=False).train()
    x = torch.randn(5, 2, D_IN, requires_grad=True)
    kt = KeyedTensor.from_tensor_list(["item", "other", "site"], [x[:, 0], torch.randn(5, 3), x[:, 1]])
    tokens, aux = online(kt)
    assert tokens.shape == (5, 2 * K, 6) and aux == {}
    tokens.sum().backward()
    assert online.sid_emb.grad is not None and online.sid_emb.grad.abs().sum() > 0
    # frozen: tokenizer state unchanged, codes equal encode()
    for k, v in tok.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    torch.testing.assert_close(online.last_codes[:, 1], tok.encode(x[:, 1].detach()))
    # token k of feature f is the SID table row of its code
    torch.testing.assert_close(tokens[0, K + 1], online.sid_emb[1, online.last_codes[0, 1, 1]])
    with pytest.raises(UserError, match="no feature 'site'"):
        online(KeyedTensor.from_tensor_list(["item"], [x[:, 0]]))
    with pytest.raises(UserError, match="pooled embedding dim 3"):
        online(torch.randn(5, 2, 3))


def test_one_tokenize_flag_definition_serves_both_entry_points():
    """`store-rec tokenize` and `python -m store_rec.distributed.tokenizer` share every common flag with the same
    default / required / choices (store_rec.tokenizer.flags)."""
    import argparse

    from store_rec.cli.tokenize import register
    from store_rec.distributed.tokenizer import build_parser

    top = argparse.ArgumentParser()
    register(top.add_subparsers())
    single = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction)).choices["tokenize"]
    acts = [{a.dest: (a.default, a.required, a.choices, a.type) for a in p._actions if a.dest != "help"}
            for p in (single, build_parser())]
    common = set(acts[0]) & set(acts[1])
    assert common == {"embeddings", "method", "num_sids", "codebook_size", "out", "report", "config", "steps", "seed",
                      "dedup", "item_feature"}
    assert {d: acts[0][d] for d in common} == {d: acts[1][d] for d in common}
    assert acts[1]["num_sids"][1] and acts[1]["codebook_size"][1]  # required in both, as in store-rec tokenize
