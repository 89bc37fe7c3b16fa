"""Behaviour sequences as tokens (issue 13, model side): HistoryConfig, HistoryEncoder, STORE with history
tokens, history MoBA (fast == reference, padding, always-attended tokens, item gate) and its FLOPs."""

from __future__ import annotations

import pytest
import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from _model_utils import tiny_batch, tiny_schema

from store_rec.config import ConfigError, from_dict
from store_rec.data.schema import SparseFeature
from store_rec.errors import UserError
from store_rec.models import ModelConfig, build_model
from store_rec.models.history import HistoryEncoder, HistoryTokenArch, history_keys
from store_rec.models.store import StoreInteractionArch
from store_rec.ops import moba
from store_rec.ops.flops import analytic_flops, history_attention_flops, interaction_flops, model_flops, topk_for

D = 8
N = 5  # history slots
HIST = {"hist_item_sid_0": 9, "hist_item_sid_1": 9, "hist_item": 40, "hist_gap": 7}


def _schema():
    s = tiny_schema()
    for name, v in HIST.items():
        f = SparseFeature(name, "history", v, multi_hot=True, max_len=N)
        f.history_of = {"hist_item": "item", "hist_gap": None}.get(name, name[len("hist_item_"):])
        s.sparse.append(f)
    return s


def _batch(schema, batch_size=8, seed=0, lens=None):
    """tiny_batch's features + aligned history lists (random lengths 0..7, some longer than N)."""
    base = tiny_batch(tiny_schema(), batch_size, seed)
    g = torch.Generator().manual_seed(seed + 1)
    lens = torch.randint(0, 8, (batch_size,), generator=g) if lens is None else torch.as_tensor(lens)
    keys, vals, lengths = list(base.sparse_features.keys()), [base.sparse_features.values()], [base.sparse_features.lengths()]
    for name, v in HIST.items():
        keys.append(name)
        vals.append(torch.randint(1, v, (int(lens.sum()),), generator=g))
        lengths.append(lens)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=keys, values=torch.cat(vals), lengths=torch.cat(lengths))
    return Batch(dense_features=base.dense_features, sparse_features=kjt, labels=base.labels)


def _cfg(history=None, **kw):
    att = {"num_heads": 2, "ffn_dim": 16, "block_size": 4, **kw.pop("attention", {})}
    h = {"enabled": True, "max_len": N, "side": ["hist_gap"], **(history or {})}
    return from_dict(ModelConfig, {"embedding_dim": D, "item_feature": "item", "attention": att, "history": h, **kw}, "model")


# ----------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("data,key", [
    ({"history": {"max_len": 0}}, "model.history.max_len"),
    ({"history": {"item_tokens": "bag"}}, "model.history.item_tokens"),
    ({"history": {"side": ["a", "a"]}}, "model.history.side"),
    ({"history": {"lenght": 3}}, "model.history.lenght"),
    ({"history": {"enabled": True}, "attention": {"routing": "query"}}, "model.attention.routing"),
    ({"history": {"enabled": True}, "tokenizer": "none"}, "model.history.item_tokens"),
])
def test_history_config_errors_name_the_key(data, key):
    with pytest.raises(ConfigError, match=f"^{key}"):
        from_dict(ModelConfig, data, "model")


def test_history_config_defaults_and_schema_keys():
    h = ModelConfig().history
    assert (h.enabled, h.max_len, h.item_tokens, h.side, h.position) == (False, 64, "sid", [], True)
    schema = _schema()
    assert history_keys(schema, _cfg()) == {"item": ["hist_item_sid_0", "hist_item_sid_1"], "side": ["hist_gap"]}
    assert history_keys(schema, _cfg({"item_tokens": "id", "side": []})) == {"item": ["hist_item"], "side": []}
    with pytest.raises(UserError, match="model.history.side"):
        history_keys(schema, _cfg({"side": ["hist_genre"]}))
    with pytest.raises(UserError, match="model.history.column"):
        history_keys(schema, _cfg({"column": "hist_movie"}))
    with pytest.raises(UserError, match="model.history.enabled"):
        build_model(_cfg(), tiny_schema())


# ----------------------------------------------------------------------------------------- encoder
def test_token_arch_left_pads_keeps_the_newest_and_adds_side_and_position():
    T, n = 2, 3
    arch = HistoryTokenArch(["a", "b"], ["s"], max_len=n, embedding_dim=1, position=True)
    with torch.no_grad():
        arch.position.weight.copy_(torch.tensor([[100.0], [200.0], [300.0]]))  # position from newest 0, 1, 2
    lengths = torch.tensor([2, 0, 5])  # row 0: two items, row 1: cold user, row 2: five (keep the last 3)
    vals = torch.arange(7, dtype=torch.float32).unsqueeze(1)  # element e of the batch = e
    emb = {"a": JaggedTensor(vals, lengths=lengths), "b": JaggedTensor(10 * vals, lengths=lengths), "s": JaggedTensor(1000 * vals, lengths=lengths)}
    out = arch(emb)
    assert out.tokens.shape == (3, n * T, 1)
    assert out.valid.tolist() == [[False, True, True], [False, False, False], [True, True, True]]
    tok = out.tokens.view(3, n, T)
    # row 0: elements 0, 1 in slots 1, 2 (newest last); slot 2 = position 0 (+100), slot 1 = position 1 (+200)
    assert tok[0].tolist() == [[0, 0], [0 + 1000 * 0 + 200, 0 + 200], [1 + 1000 + 100, 10 + 1000 + 100]]
    assert tok[1].abs().sum() == 0  # padding is exact zeros
    # row 2: elements 2..6, the newest three are 4, 5, 6
    assert tok[2, :, 0].tolist() == [4 + 4000 + 300, 5 + 5000 + 200, 6 + 6000 + 100]
    with pytest.raises(ValueError, match="'s'"):
        arch({**emb, "s": JaggedTensor(vals[:6], lengths=torch.tensor([2, 0, 4]))})


def test_encoder_reads_its_keys_from_a_kjt_with_other_keys():
    schema = _schema()
    enc = HistoryEncoder(["hist_item_sid_0", "hist_item_sid_1"], ["hist_gap"], HIST, D, N, position=False)
    assert enc.num_tokens == 2 * N and enc.keys == ["hist_item_sid_0", "hist_item_sid_1", "hist_gap"]
    assert [c.name for c in enc.embedding_collection.embedding_configs()] == ["t_hist_item_sid_0", "t_hist_item_sid_1",
                                                                                "t_hist_gap"]
    batch = _batch(schema, 6, lens=[0, 1, 5, 7, 2, 3])
    out = enc(batch.sparse_features)
    d = batch.sparse_features.to_dict()
    W = {k: enc.embedding_collection.embeddings[f"t_{k}"].weight for k in enc.keys}
    row, ln = 3, 7  # 7 items -> the last 5
    ids = {k: d[k].values()[d[k].offsets()[row]:d[k].offsets()[row + 1]][ln - N:] for k in enc.keys}
    want = torch.stack([W[k][ids[k]] + W["hist_gap"][ids["hist_gap"]] for k in ("hist_item_sid_0", "hist_item_sid_1")], 1)
    torch.testing.assert_close(out.tokens[row].view(N, 2, D), want)
    assert out.valid.sum(1).tolist() == [0, 1, 5, 5, 2, 3]


# ----------------------------------------------------------------------------------------- the op
def _qkv(B=3, H=2, L=30, Dh=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, L, Dh, generator=g, requires_grad=True) for _ in range(3)]


@pytest.mark.parametrize("sparsity,gated", [(0.5, True), (0.75, False), (0.0, True)])
def test_history_attention_fast_equals_reference_with_gradients(sparsity, gated):
    B, H, L, Dh, R, bs = 4, 2, 30, 8, 24, 6
    q, k, v = _qkv(B, H, L, Dh)
    kv = torch.ones(B, R, dtype=torch.bool)
    kv[0, :13] = False  # partly padded (a partial block)
    kv[1] = False  # a cold user: only the fixed keys
    kv[2, :18] = False  # fewer real blocks than topk
    gate = torch.randn(B, H, Dh) if gated else None
    w = torch.randn(B, H, L, Dh)
    res = {}
    for impl in ("reference", "fast"):
        out = moba.history_attention(q, k, v, kv, block_size=bs, sparsity=sparsity, impl=impl, gate=gate)
        res[impl] = (out, torch.autograd.grad((out * w).sum(), [q, k, v]))
    assert torch.isfinite(res["fast"][0]).all()
    torch.testing.assert_close(res["fast"][0], res["reference"][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(res["fast"][1], res["reference"][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_history_attention_masks_padding_and_always_attends_the_fixed_tokens():
    B, H, L, Dh, R, bs = 2, 1, 14, 4, 12, 3
    q, k, v = _qkv(B, H, L, Dh, seed=1)
    kv = torch.ones(B, R, dtype=torch.bool)
    kv[:, :3] = False  # the first item block is padding
    gate = torch.randn(B, H, Dh)
    out = moba.history_attention(q, k, v, kv, block_size=bs, sparsity=0.75, impl="fast", gate=gate)  # 1 of 4 blocks
    sel = moba.route_history(k[:, :, :R], kv, gate, block_size=bs, topk=1)
    # by hand: every query over its selected block's keys + the 2 fixed keys
    for b in range(B):
        keys = list(range(sel[b, 0, 0] * bs, sel[b, 0, 0] * bs + bs)) + [12, 13]
        p = torch.softmax(q[b, 0] @ k[b, 0, keys].T / Dh ** 0.5, dim=-1)
        torch.testing.assert_close(out[b, 0], p @ v[b, 0, keys])
    # padding values never reach the output (dense mode too)
    for impl in ("fast", "dense", "reference"):
        v2 = v.detach().clone()
        v2[:, :, :3] = 1e6
        a = moba.history_attention(q, k, v, kv, block_size=bs, sparsity=0.75, impl=impl, gate=gate)
        b2 = moba.history_attention(q, k, v2, kv, block_size=bs, sparsity=0.75, impl=impl, gate=gate)
        torch.testing.assert_close(a, b2)


def test_padding_blocks_are_never_preferred_over_real_ones():
    B, H, Dh, bs, nb = 2, 2, 4, 2, 6
    k = torch.randn(B, H, nb * bs, Dh)
    gate = torch.ones(B, H, Dh)
    k[:, :, : 2 * bs] = 100.0  # the padding blocks would win the gate by far
    kv = torch.ones(B, nb * bs, dtype=torch.bool)
    kv[:, : 2 * bs] = False
    sel = moba.route_history(k, kv, gate, block_size=bs, topk=3)
    assert (sel >= 2).all()  # 4 real blocks >= topk: only real blocks are chosen
    # the gate chooses: the real block aligned with the gate is always selected
    k[:, :, 4 * bs: 5 * bs] = 50.0
    sel = moba.route_history(k, kv, gate, block_size=bs, topk=1)
    assert (sel == 4).all()


def test_recent_blocks_are_always_selected():
    B, H, Dh, bs, nb = 2, 2, 4, 2, 6
    k = torch.randn(B, H, nb * bs, Dh)
    k[:, :, -bs:] = -100.0  # the newest block loses the gate by far
    gate = torch.ones(B, H, Dh)
    kv = torch.ones(B, nb * bs, dtype=torch.bool)
    assert not (moba.route_history(k, kv, gate, block_size=bs, topk=2) == nb - 1).any()
    sel = moba.route_history(k, kv, gate, block_size=bs, topk=2, recent=1)
    assert (sel[..., -1] == nb - 1).all()
    kv[1] = False  # a cold user: nothing is forced, every block stays -inf (masked)
    sel = moba.route_history(k, kv, gate, block_size=bs, topk=3, recent=3)
    assert sel[0].tolist() == [[3, 4, 5]] * H  # recent >= topk: a pure recency window
    # through the model config
    schema = _schema()
    model = build_model(_cfg({"recent_blocks": 1}), schema)
    assert all(layer.attn.recent_blocks == 1 for layer in model.model.inter_arch.layers)
    q, kk, v = _qkv(B, H, 4 * 6 + 3, Dh)
    kv = torch.ones(B, 24, dtype=torch.bool)
    for impl in ("fast", "reference"):
        moba.history_attention(q, kk, v, kv, block_size=6, sparsity=0.5, impl=impl, recent_blocks=1).sum().backward()


# ----------------------------------------------------------------------------------------- STORE
def test_store_with_history_tokens_trains_end_to_end():
    schema = _schema()
    torch.manual_seed(0)
    model = build_model(_cfg(attention={"gate": "item"}), schema)
    inter = model.model.inter_arch
    # 5 items x 2 SID tokens, blocks of 4 tokens = 2 items -> padded to 6 items = 12 history tokens, 3 blocks
    assert (inter.history_items, inter.history_item_tokens, inter.history_pad_items, inter.num_history_tokens) == (5, 2, 1, 12)
    assert inter.seq_len == 6 and inter.output_dim == 6 * D  # the output pools the non-sequential tokens only
    assert model.embedding_collection is model.model.history.embedding_collection
    # the inner DLRM_STORE's own forward (the drop-in path, e.g. under DLRMTrain) runs the history too
    b0 = _batch(schema, 4)
    torch.testing.assert_close(model.model(b0.dense_features, b0.sparse_features).squeeze(-1), model(b0).logits)
    assert build_model(_cfg({"enabled": False}), schema).embedding_collection is None
    from store_rec.models.history import history_tables

    assert [(t.name, t.num_embeddings, t.feature_names) for t in history_tables(schema, _cfg())] == [
        (c.name, c.num_embeddings, c.feature_names) for c in model.embedding_collection.embedding_configs()]
    assert history_tables(schema, _cfg({"enabled": False})) == []
    parts = model.dense_children()  # train.compile's modules: the token arch, not the EC
    assert parts["history.token_arch"] is model.model.history.token_arch and "history" not in parts
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for t in range(30):
        batch = _batch(schema, 32, seed=t % 3)
        out = model(batch)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, batch.labels)
        opt.zero_grad()
        loss.backward()
        if t == 0:
            ec = model.model.history.embedding_collection.embeddings
            assert all(float(ec[n].weight.grad.abs().sum()) > 0 for n in ("t_hist_item_sid_0", "t_hist_gap"))
            assert float(model.model.history.token_arch.position.weight.grad.abs().sum()) > 0
        opt.step()
        losses.append(float(loss))
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3])


@pytest.mark.parametrize("attention", [{"type": "moba", "gate": "item"}, {"type": "moba"}, {"type": "vanilla"}])
def test_padding_slots_do_not_change_the_output(attention):
    """A row's logit depends only on its real history items: garbage in padding slots is invisible."""
    schema = _schema()
    torch.manual_seed(0)
    model = build_model(_cfg(attention=attention), schema).eval()
    batch = _batch(schema, 6, lens=[0, 1, 2, 3, 6, 7])
    inter, m = model.model.inter_arch, model.model
    ed, es = m.dense_arch(batch.dense_features), m.sparse_arch(batch.sparse_features)
    h = m.history(batch.sparse_features)
    base = inter(dense_features=ed, sparse_features=es, history=h.tokens, history_valid=h.valid)
    noisy = h.tokens + 50 * torch.randn_like(h.tokens) * (~h.valid).repeat_interleave(2, 1).unsqueeze(-1)
    torch.testing.assert_close(inter(dense_features=ed, sparse_features=es, history=noisy, history_valid=h.valid), base)
    torch.testing.assert_close(model(batch).logits, m.over_arch(base).squeeze(-1))


def test_item_gate_routes_history_blocks_with_the_target_item(monkeypatch):
    schema = _schema()
    torch.manual_seed(0)
    model = build_model(_cfg(attention={"gate": "item", "num_layers": 1}), schema).eval()
    inter, m = model.model.inter_arch, model.model
    seen = []
    real = moba.route_history

    def spy(k, key_valid, gq, **kw):
        seen.append(gq)
        return real(k, key_valid, gq, **kw)

    monkeypatch.setattr(moba, "route_history", spy)
    batch = _batch(schema, 4, lens=[5, 5, 3, 7])
    model(batch)
    # the gate = the target item's SID tokens (positions 2, 3 of the non-sequential part) through W_q
    ed, es = m.dense_arch(batch.dense_features), m.sparse_arch(batch.sparse_features)
    x0 = inter.tokens(ed, es)
    attn = inter.layers[0].attn
    want = torch.nn.functional.linear(x0[:, [2, 3]].mean(1), attn.in_proj.weight[:D], attn.in_proj.bias[:D]).view(4, 2, 4)
    assert inter.gate_pos.tolist() == [2, 3]
    torch.testing.assert_close(seen[0], want)


def test_store_history_fast_equals_reference_model():
    schema = _schema()
    torch.manual_seed(0)
    fast = build_model(_cfg(attention={"gate": "item", "sparsity": 0.5}), schema)
    ref = build_model(_cfg(attention={"gate": "item", "sparsity": 0.5, "impl": "reference"}), schema)
    ref.load_state_dict(fast.state_dict())
    batch = _batch(schema, 8)
    lf, lr = fast(batch).logits, ref(batch).logits
    torch.testing.assert_close(lf, lr, rtol=1e-5, atol=1e-5)
    lf.sum().backward()
    lr.sum().backward()
    for (n, a), (_, b) in zip(fast.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.parametrize("attention", [{"gate": "item"}, {"type": "vanilla"}])
def test_last_layer_computing_only_the_non_sequential_queries_is_exact(attention):
    schema = _schema()
    torch.manual_seed(0)
    model = build_model(_cfg(attention=attention), schema)
    inter = model.model.inter_arch
    assert inter.prune_last
    batch = _batch(schema, 6)
    pruned = model(batch).logits
    inter.prune_last = False
    torch.testing.assert_close(model(batch).logits, pruned, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["fast", "reference", "dense"])
def test_history_attention_with_the_fixed_queries_only(impl):
    B, H, L, Dh, R, bs = 3, 2, 30, 8, 24, 6
    q, k, v = _qkv(B, H, L, Dh, seed=2)
    kv = torch.ones(B, R, dtype=torch.bool)
    kv[0, :7] = False
    full = moba.history_attention(q, k, v, kv, block_size=bs, sparsity=0.5, impl=impl)
    part = moba.history_attention(q[:, :, R:], k, v, kv, block_size=bs, sparsity=0.5, impl=impl)
    torch.testing.assert_close(part, full[:, :, R:])


def test_block_size_must_hold_whole_items():
    schema = _schema()
    with pytest.raises(UserError, match="model.attention.block_size"):
        build_model(_cfg(attention={"block_size": 3}), schema)  # 2 tokens per item
    with pytest.raises(ValueError, match="attention.block_size"):
        StoreInteractionArch(3, D, attention={"num_heads": 2, "block_size": 3}, history_items=4, history_item_tokens=2)
    build_model(_cfg({"item_tokens": "id"}, attention={"block_size": 3}), schema)  # 1 token per item: any size


def test_history_disabled_keeps_the_model_unchanged():
    schema = _schema()
    torch.manual_seed(0)
    a = build_model(_cfg({"enabled": False}), schema)
    torch.manual_seed(0)
    b = build_model(from_dict(ModelConfig, {"embedding_dim": D, "item_feature": "item", "attention": {
        "num_heads": 2, "ffn_dim": 16, "block_size": 4}}, "model"), schema)
    assert a.model.history is None and list(a.state_dict()) == list(b.state_dict())
    batch = _batch(schema, 4)
    torch.testing.assert_close(a(batch).logits, b(batch).logits)


# ----------------------------------------------------------------------------------------- FLOPs
def test_history_attention_flops_hand_count():
    B, H, L, Dh, R, bs = 4, 2, 20, 8, 16, 4  # 4 history blocks, sparsity 1/2 -> 2 kept, 4 fixed tokens
    f = history_attention_flops(B, H, L, Dh, history=R, block_size=bs, sparsity=0.5, backward=True)
    lk = 2 * bs + (L - R)  # 12 keys per query
    fwd = B * H * (2 * L * lk * Dh) * 2  # QK^T and PV
    assert f["attention"] == fwd + fwd * 5 // 2
    assert f["gate"] == B * H * (L * Dh + 2 * 4 * Dh)  # block means of R keys + mean of L - R fixed queries + scores
    last = history_attention_flops(B, H, L, Dh, history=R, block_size=bs, sparsity=0.5, queries=L - R)
    assert last["attention"] == B * H * (2 * (L - R) * lk * Dh) * 2 * 7 // 2  # only the 4 fixed queries attend
    dense = history_attention_flops(B, H, L, Dh, history=R, block_size=bs, sparsity=0.5, impl="dense")
    assert dense["total"] == B * H * (2 * L * L * Dh) * 2 * 7 // 2 and dense["gate"] == 0
    assert topk_for(0.5, R // bs) == 2


def test_model_flops_with_history_moba_vs_vanilla():
    schema = _schema()
    moba_m = build_model(_cfg(attention={"sparsity": 0.5}), schema, device=torch.device("meta"))
    van = build_model(_cfg(attention={"type": "vanilla"}), schema, device=torch.device("meta"))
    mi, vi = moba_m.model.inter_arch, van.model.inter_arch
    assert (mi.num_history_tokens, vi.num_history_tokens) == (12, 10)  # vanilla: no block padding
    B, L, L0, H, Dh = 64, 12 + 6, 6, 2, D // 2
    # layer 1: q/k/v/out projections of L tokens + history MoBA with L queries; layer 2 (the last):
    # k/v of L tokens, q/out of the L0 non-sequential tokens + L0 queries
    proj1 = 4 * 2 * B * L * D * D * 3
    proj2 = (2 * 2 * B * L * D * D + 2 * 2 * B * L0 * D * D) * 3
    core1 = history_attention_flops(B, H, L, Dh, history=12, block_size=4, sparsity=0.5)["total"]
    core2 = history_attention_flops(B, H, L, Dh, history=12, block_size=4, sparsity=0.5, queries=L0)["total"]
    assert analytic_flops(mi, B) == proj1 + core1 + proj2 + core2
    fm = model_flops(moba_m, B)
    assert fm > analytic_flops(mi, B) and model_flops(moba_m, 2 * B) == 2 * fm
    assert interaction_flops(mi, B) > analytic_flops(mi, B)
    assert model_flops(van, B) > analytic_flops(vi, B)


def test_interaction_arch_requires_history_when_built_with_it():
    arch = StoreInteractionArch(3, D, attention={"num_heads": 2, "block_size": 2}, history_items=4, history_item_tokens=2)
    with pytest.raises(ValueError, match="history"):
        arch(dense_features=torch.randn(2, D), sparse_features=torch.randn(2, 3, D))
    out = arch(dense_features=torch.randn(2, D), sparse_features=torch.randn(2, 3, D), history=torch.randn(2, 8, D),
               history_valid=torch.ones(2, 4, dtype=torch.bool))
    assert out.shape == (2, arch.output_dim)


# ----------------------------------------------------------------------------------------- prepared data
def test_store_with_history_on_prepared_synthetic_data(tmp_path):
    """The data side's history lists (synthetic, history_len 8) + a SID table through the loader ->
    the model's HistoryEncoder: history SID tokens + category / gap side keys; trains a few steps."""
    import numpy as np

    from store_rec.data.loader import ParquetBatchLoader
    from store_rec.data.sid_table import write_sid_table
    from store_rec.data.synthetic import prepare_synthetic

    prepare_synthetic(tmp_path / "ds", rows=3000, items=200, users=60, num_clusters=8, num_user_groups=4, seed=5,
                      history_len=8)
    ids = np.arange(1, 201)
    sid = write_sid_table(tmp_path / "sids.parquet", ids, np.stack([ids % 7, ids % 3, ids % 5], 1), method="opmq",
                          codebook_size=7, item_feature="item_id")
    ld = ParquetBatchLoader(tmp_path / "ds", "train", 128, sid_table=sid, history_len=6)
    cfg = from_dict(ModelConfig, {"embedding_dim": D, "item_feature": "item_id", "attention": {
        "block_size": 6, "gate": "item", "num_heads": 2, "ffn_dim": 16},
        "history": {"enabled": True, "max_len": 6, "side": ["hist_category", "hist_gap"]}}, "model")
    torch.manual_seed(0)
    model = build_model(cfg, ld.schema)
    enc = model.model.history
    assert enc.keys == ["hist_item_id_sid_0", "hist_item_id_sid_1", "hist_item_id_sid_2", "hist_category", "hist_gap"]
    assert model.model.inter_arch.num_history_tokens == 18  # 6 items x 3 SIDs, blocks of 2 items
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    n_valid = 0
    for batch in ld:
        h = enc(batch.sparse_features)
        lens = batch.sparse_features["hist_item_id"].lengths()
        assert h.valid.sum(1).tolist() == lens.clamp(max=6).tolist()
        n_valid += int(h.valid.sum())
        out = model(batch)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, batch.labels.float())
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert n_valid > 0


# ----------------------------------------------------------------------------------------- DMP
def _dmp_worker(steps: int):
    """One gloo rank: StoreModel with history, built on meta, sharded by DMP (EBC + EC), trained through
    TrainPipelineSparseDist; returns the losses and what was sharded / pipelined."""
    import torch.distributed as dist
    from torch.distributed.optim import _apply_optimizer_in_backward as apply_optimizer_in_backward
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
    from torchrec.optim.keyed import KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    from store_rec.models import RankingTrain

    dist.init_process_group("gloo")
    torch.manual_seed(0)
    schema = _schema()
    train = RankingTrain(build_model(_cfg(attention={"gate": "item"}), schema, device=torch.device("meta")))
    for m in (train.model.embedding_bag_collection, train.model.embedding_collection):
        apply_optimizer_in_backward(torch.optim.SGD, m.parameters(), {"lr": 0.5})
    model = DistributedModelParallel(module=train, device=torch.device("cpu"))
    opt = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(model.named_parameters())),
                                lambda ps: torch.optim.Adam(ps, lr=1e-2))
    pipeline = TrainPipelineSparseDist(model, opt, torch.device("cpu"))
    it = iter([_batch(schema, 32, seed=i % 3) for i in range(steps)])
    losses = []
    while True:
        try:
            losses.append(float(pipeline.progress(it).losses["bce"]))
        except StopIteration:
            break
    ec = model.module.model.model.history.embedding_collection
    out = {"losses": losses, "ec": type(ec).__name__,
           "pipelined": sorted(type(m).__name__ for m in pipeline._pipelined_modules)}
    dist.destroy_process_group()
    return out


def test_history_encoder_under_dmp_and_train_pipeline():
    from store_rec.distributed.local_launch import launch_local

    out = launch_local(_dmp_worker, (24,), nproc=1)[0]
    assert out["ec"] == "ShardedEmbeddingCollection"
    assert out["pipelined"] == ["ShardedEmbeddingBagCollection", "ShardedEmbeddingCollection"]  # both input dists overlap
    losses = out["losses"]
    assert len(losses) == 24 and sum(losses[-3:]) < 0.9 * sum(losses[:3]), losses


# ----------------------------------------------------------------------------------------- the bench script
def test_bench_history_script_tiny(tmp_path):
    """scripts/bench_history.py in its CI size: JSON with the op and model comparisons (no timing asserted)."""
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_history", Path(__file__).resolve().parents[1] / "scripts" /
                                                  "bench_history.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    threads = torch.get_num_threads()
    try:
        res = mod.main(["--tiny", "--out", str(tmp_path / "b.json")])
    finally:
        torch.set_num_threads(threads)
    assert json.loads((tmp_path / "b.json").read_text()) == res
    (op,), (m,) = res["op"], res["model"]
    assert op["tokens"] == 36 and op["flops_ratio_1/2"] > 1 and set(op["ms"]) == {"vanilla", "moba_1/2", "moba_3/4"}
    assert m["tokens"] == m["history_tokens"] + m["non_sequential_tokens"] and m["history_tokens"] == 24
    assert m["tflops_ratio"] > 1 and m["speedup"] > 0


def test_token_ffn_with_history_mixes_shared_and_per_token_parameters():
    """OneTrans-style mixed FFN: the history tokens share one FFN, each non-sequential token has its
    own; the parameter count does not depend on N, the pruned last layer stays exact, and every FFN gets
    a gradient."""
    schema = _schema()
    torch.manual_seed(0)
    model = build_model(_cfg(attention={"gate": "item", "token_ffn": True, "dot_features": True}), schema)
    inter = model.model.inter_arch
    layer = inter.layers[0]
    assert inter.prune_last and layer.history_ffn is not None
    assert layer.ffn.num_tokens == inter.seq_len and layer.history_tokens == inter.num_history_tokens
    batch = _batch(schema, 6)
    pruned = model(batch).logits
    inter.prune_last = False
    torch.testing.assert_close(model(batch).logits, pruned, rtol=1e-5, atol=1e-6)
    inter.prune_last = True
    pruned.sum().backward()
    for name in ("ffn.w1", "ffn.w2", "history_ffn.0.weight", "history_ffn.3.weight"):
        g = dict(layer.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name
    # the history positions take history_ffn, the non-sequential ones the per-token FFN
    x = torch.randn(2, inter.num_tokens, D)
    ref = torch.cat([layer.history_ffn(x[:, :inter.num_history_tokens]), layer.ffn(x[:, inter.num_history_tokens:])], 1)
    torch.testing.assert_close(layer._ffn(x), ref)
    n_params = sum(p.numel() for p in layer.parameters())
    longer = build_model(_cfg(attention={"gate": "item", "token_ffn": True}, history={"max_len": 16}), schema)
    assert sum(p.numel() for p in longer.model.inter_arch.layers[0].parameters()) == n_params
