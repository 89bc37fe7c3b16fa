"""StoreInteractionArch / StoreModel / ModelConfig / tables: shapes, gradients, switches, FLOPs."""

from __future__ import annotations

import pytest
import torch

from _model_utils import tiny_batch, tiny_schema

from store_rec.config import ConfigError, from_dict
from store_rec.errors import UserError
from store_rec.models import (
    AttentionConfig,
    ModelConfig,
    RankingTrain,
    RotationConfig,
    StoreInteractionArch,
    StoreModel,
    build_model,
    embedding_tables,
    model_features,
)
from store_rec.models import store as store_mod
from store_rec.modules.rotation import AlternatingOptimizer, AlternatingSchedule, rotation_modules, split_rotation_params
from store_rec.ops.flops import analytic_flops, interaction_flops, model_flops, tflops_per_batch

D = 8


def _arch(**kw):
    att = AttentionConfig(num_layers=2, num_heads=2, ffn_dim=16, block_size=2, pooling=kw.pop("pooling", "flatten"))
    return StoreInteractionArch(num_sparse_features=6, embedding_dim=D, static_groups=[[3, 4], [5]], attention=att, **kw)


@pytest.mark.parametrize("pooling,out", [("flatten", (1 + 3 + 2) * D), ("mean", D)])
def test_interaction_arch_shapes_and_gradients(pooling, out):
    torch.manual_seed(0)
    arch = _arch(pooling=pooling)
    assert arch.seq_len == 6 and arch.output_dim == out
    dense = torch.randn(4, D, requires_grad=True)
    sparse = torch.randn(4, 6, D, requires_grad=True)
    y = arch(dense_features=dense, sparse_features=sparse)
    assert y.shape == (4, out)
    (y.square().sum() + sum(arch.aux_losses().values())).backward()
    assert dense.grad.abs().sum() > 0
    assert (sparse.grad.abs().sum(dim=(0, 2)) > 0).all()  # every feature reaches the output
    for name, p in arch.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_token_layout():
    arch = _arch()
    dense, sparse = torch.randn(2, D), torch.randn(2, 6, D)
    x = arch.tokens(dense, sparse)
    assert x.shape == (2, 6, D)
    torch.testing.assert_close(x[:, 0], dense)
    torch.testing.assert_close(x[:, 1:4], sparse[:, [0, 1, 2]])
    torch.testing.assert_close(x[:, 4:], arch.rotation(sparse[:, [3, 4, 5]]))
    off = _arch(rotation=RotationConfig(enabled=False, static_tokens="per_feature"))
    assert off.rotation is None and off.seq_len == 7 and off.aux_losses() == {}
    torch.testing.assert_close(off.tokens(dense, sparse)[:, 1:], sparse)


def test_interaction_arch_rejects_bad_indices():
    with pytest.raises(ValueError, match="duplicated: \\[1\\]"):
        StoreInteractionArch(3, D, token_indices=[0, 1], static_groups=[[1, 2]])
    with pytest.raises(ValueError, match="unassigned: \\[2\\]"):
        StoreInteractionArch(3, D, token_indices=[0], static_groups=[[1]])
    with pytest.raises(ValueError, match="out of range"):
        StoreInteractionArch(3, D, static_groups=[[5]])


def test_make_attention_passes_switches(monkeypatch):
    seen = {}

    class Recorder(torch.nn.Module):
        def __init__(self, embed_dim, num_heads, **kw):
            super().__init__()
            seen.update(kw, embed_dim=embed_dim, num_heads=num_heads)

    monkeypatch.setattr("store_rec.ops.moba.BlockSparseAttention", Recorder)
    store_mod.make_attention(16, AttentionConfig(type="vanilla", sparsity=0.25, block_size=8, routing="query", num_heads=4,
                                                 own_block=True))
    assert seen == dict(embed_dim=16, num_heads=4, block_size=8, sparsity=0.25, routing="query", dense=True, impl="fast",
                        dropout=0.0, own_block=True)
    with pytest.raises(ConfigError, match="own_block"):
        AttentionConfig(routing="instance", own_block=True)
    store_mod.make_attention(16, AttentionConfig(type="moba"))
    assert seen["dense"] is False and seen["sparsity"] == 0.5


def _cfg(**kw):
    base = dict(embedding_dim=D, item_feature="item", attention={"num_heads": 2, "ffn_dim": 16, "block_size": 2})
    base.update(kw)
    return from_dict(ModelConfig, base, path="model")


def test_store_model_forward_backward():
    torch.manual_seed(0)
    schema = tiny_schema()
    model = build_model(_cfg(), schema)
    assert isinstance(model, StoreModel)
    batch = tiny_batch(schema, 8)
    logits, aux = model(batch)
    assert logits.shape == (8,) and set(aux) == {"diversity"}
    assert model.aux_loss_weights() == {"diversity": 0.1}
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
    (loss + sum(model.aux_loss_weights()[k] * v for k, v in aux.items())).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
    ebc = model.embedding_bag_collection
    assert ebc.embedding_bags["t_sid_0"].weight.grad.abs().sum() > 0


def test_ranking_train_loss_adds_weighted_aux():
    torch.manual_seed(0)
    schema = tiny_schema()
    model = build_model(_cfg(rotation={"diversity_weight": 0.25}), schema)
    batch = tiny_batch(schema, 8)
    train = RankingTrain(model)
    loss, out = train(batch)
    logits2, aux = model(batch)
    torch.testing.assert_close(out.logits, logits2.detach())
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits2, batch.labels)
    expected = bce + 0.25 * aux["diversity"]
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(out.loss, expected.detach())
    torch.testing.assert_close(out.losses["bce"], bce.detach())
    torch.testing.assert_close(out.losses["diversity"], aux["diversity"].detach())
    assert not out.losses["bce"].requires_grad and not out.loss.requires_grad and out.labels.shape == (8,)
    assert set(out.losses) == {"bce", "diversity"}
    assert out.user_ids.dtype == torch.int64 and out.user_ids.shape == (8,)
    no_aux = RankingTrain(model, aux_weights={"diversity": 0.0})  # given weights override the model's per key
    loss0, out0 = no_aux(batch)
    torch.testing.assert_close(loss0, out0.losses["bce"])


def test_store_model_trains_with_alternating_optimizer():
    torch.manual_seed(0)
    schema = tiny_schema()
    model = build_model(_cfg(rotation={"schedule": "2:1"}), schema)
    main, rot = split_rotation_params(model)
    assert rot and all("rotations" in n for n in rot)
    opt = AlternatingOptimizer(
        torch.optim.Adam(main.values(), lr=1e-2), torch.optim.Adam(rot.values(), lr=1e-2),
        AlternatingSchedule("2:1"), rotation_modules(model),
    )
    batch = tiny_batch(schema, 64, seed=1)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        logits, aux = model(batch)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
        (loss + 0.1 * aux["diversity"]).backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert rotation_modules(model)[0].orthogonality_error() < 1e-5


def test_meta_device_construction_and_flops():
    schema = tiny_schema()
    model = build_model(_cfg(), schema, device=torch.device("meta"))
    assert all(p.is_meta for p in model.embedding_bag_collection.parameters())
    assert not any(p.is_meta for n, p in model.named_parameters() if "embedding_bag" not in n)
    f1, f2 = model_flops(model, 512), model_flops(model, 1024)
    assert f2 == 2 * f1 > 0
    inter = model.model.inter_arch
    assert f1 > analytic_flops(inter, 512)
    assert tflops_per_batch(model) == pytest.approx(f2 / 1e12)


def test_moba_counts_fewer_flops_than_vanilla_by_the_attention_difference():
    schema = tiny_schema()
    att = {"num_heads": 2, "ffn_dim": 16, "block_size": 2, "sparsity": 0.5}
    moba = build_model(_cfg(attention=dict(att, type="moba")), schema, device=torch.device("meta"))
    dense = build_model(_cfg(attention=dict(att, type="vanilla")), schema, device=torch.device("meta"))
    mi, di = moba.model.inter_arch, dense.model.inter_arch
    assert mi.seq_len == di.seq_len == 6  # 3 key blocks of 2 -> MoBA keeps 2
    diff = model_flops(dense, 1024) - model_flops(moba, 1024)
    assert diff > 0
    assert diff == analytic_flops(di, 1024) - analytic_flops(mi, 1024)


def test_dlrm_flops_hand_count():
    """Forward FLOPs of TorchRec DLRM, counted by hand: dense MLP + pairwise dots + over MLP."""
    schema = tiny_schema()
    cfg = _cfg(name="dlrm", dense_arch=[5], over_arch=[7])
    model = build_model(cfg, schema)
    F = len(model_features(schema, cfg).all)  # 6 (site, sid_0, sid_1 + 3 static)
    B, n_dense = 10, 2
    dense = 2 * B * (n_dense * 5 + 5 * D)
    inter = 2 * B * (F + 1) * (F + 1) * D
    over_in = D + F * (F + 1) // 2  # D + choose(F, 2) + F
    over = 2 * B * (over_in * 7 + 7 * 1)
    assert model_flops(model, B, backward=False) == dense + inter + over


def test_config_switches_build_each_ablation_variant():
    schema = tiny_schema()
    raw = build_model(_cfg(tokenizer="none"), schema)
    assert [c.name for c in raw.embedding_bag_collection.embedding_bag_configs()] == [
        "t_item", "t_site", "t_age", "t_gender", "t_hour"]
    for tok in ("opmq", "rqvae", "opq"):
        m = build_model(_cfg(tokenizer=tok), schema)
        assert [c.name for c in m.embedding_bag_collection.embedding_bag_configs()] == [
            "t_site", "t_sid_0", "t_sid_1", "t_age", "t_gender", "t_hour"]
    off = build_model(_cfg(rotation={"enabled": False}), schema)
    assert not rotation_modules(off) and off(tiny_batch(schema, 4))[1] == {} and off.aux_loss_weights() == {}
    on = build_model(_cfg(), schema)
    assert len(rotation_modules(on)) == 1 and rotation_modules(on)[0].num_rotations == 2  # user, context
    for att in ("moba", "vanilla"):
        m = build_model(_cfg(attention={"type": att, "num_heads": 2, "ffn_dim": 16, "block_size": 2}), schema)
        assert m(tiny_batch(schema, 4))[0].shape == (4,)


@pytest.mark.parametrize(
    "data,key",
    [
        ({"attention": {"type": "flash"}}, "model.attention.type"),
        ({"tokenizer": "kmeans"}, "model.tokenizer"),
        ({"rotation": {"enabled": "yes"}}, "model.rotation.enabled"),
        ({"rotation": {"schedule": "1-1"}}, "model.rotation.schedule"),
        ({"rotation": {"method": "svd"}}, "model.rotation.method"),
        ({"name": "xgboost"}, "model.name"),
        ({"attention": {"sparsity": 1.0}}, "model.attention.sparsity"),
        ({"embedding_dim": 6}, "model.embedding_dim"),
        ({"attention": {"bogus": 1}}, "model.attention.bogus"),
    ],
)
def test_unknown_switch_values_name_the_key(data, key):
    with pytest.raises(ConfigError) as e:
        from_dict(ModelConfig, data, path="model")
    assert str(e.value).startswith(key), str(e.value)


def test_tables_and_feature_errors():
    schema = tiny_schema()
    tables = embedding_tables(schema, _cfg(embedding_dim=12))
    assert all(t.embedding_dim == 12 and t.embedding_dim % 4 == 0 for t in tables)
    assert {t.name: (t.num_embeddings, t.feature_names) for t in tables}["t_sid_0"] == (9, ["sid_0"])
    with pytest.raises(UserError, match="sid_"):
        model_features(tiny_schema(with_sids=False), _cfg())
    with pytest.raises(UserError, match="item_feature"):
        model_features(schema, _cfg(item_feature="hour"))
    with pytest.raises(ConfigError, match="item_feature"):
        _cfg(sid_source="online", item_feature=None)
    feats = model_features(schema, _cfg(sid_source="online", item_feature="item"))
    assert feats.online == ["item"] and feats.tokens == ["item", "site"]  # the batch's sid_* are not used


def test_item_gate_uses_target_item_tokens():
    schema = tiny_schema()
    att = {"num_heads": 2, "ffn_dim": 16, "block_size": 2, "gate": "item"}
    model = build_model(_cfg(attention=att), schema)
    inter = model.model.inter_arch
    # sequence: [dense, site, sid_0, sid_1, rot_user, rot_context] -> SIDs at positions 2, 3
    assert inter.gate_pos.tolist() == [2, 3]
    logits, _ = model(tiny_batch(schema, 4))
    logits.sum().backward()
    raw = build_model(_cfg(tokenizer="none", attention=att), schema)
    assert raw.model.inter_arch.gate_pos.tolist() == [1]  # the raw item id token
    with pytest.raises(ValueError, match="gate_indices"):
        StoreInteractionArch(3, D, attention=AttentionConfig(gate="item"))


def test_no_dense_features_uses_constant_input():
    schema = tiny_schema(dense=0)
    model = build_model(_cfg(), schema)
    logits, _ = model(tiny_batch(schema, 4))
    assert logits.shape == (4,)


def test_interaction_arch_flops_counts_ffn_and_analytic_attention():
    """``interaction_flops(StoreInteractionArch)``: FFN/LayerNorm/projection matmuls counted by FlopCounterMode, the
    attention core analytically; MoBA and vanilla differ by exactly their attention-core difference."""
    from store_rec.models.config import AttentionConfig, RotationConfig
    from store_rec.models.store import StoreInteractionArch

    B, L, D, ffn = 8, 32, 16, 32

    def arch(kind):
        att = AttentionConfig(type=kind, sparsity=0.5, block_size=4, num_layers=1, num_heads=2, ffn_dim=ffn, pooling="mean")
        return StoreInteractionArch(L - 1, D, rotation=RotationConfig(enabled=False), attention=att)

    m, v = arch("moba"), arch("vanilla")
    fm, fv = interaction_flops(m, B), interaction_flops(v, B)
    # FFN alone: two linears, fwd 2*B*L*D*ffn each, bwd twice that (input + weight grads)
    ffn_flops = 3 * 2 * (2 * B * L * D * ffn)
    assert fv - analytic_flops(v, B) >= ffn_flops
    assert fm - analytic_flops(m, B) == fv - analytic_flops(v, B)
    assert analytic_flops(v, B) > analytic_flops(m, B) > 0
    assert interaction_flops(m, 2 * B) == 2 * fm  # linear in the batch



def _opmq(dim, k=2, c=4, seed=0):
    from store_rec.tokenizer import OPMQ

    tok = OPMQ(dim, k, c, hidden_dims=[8], latent_dim=4, seed=seed)
    tok(torch.randn(64, dim))  # k-means initialisation of the codebooks from data
    return tok.eval()


@pytest.mark.parametrize("finetune", [False, True])
def test_online_sids_replace_the_item_token(tmp_path, finetune):
    """sid_source online: the item's pooled embedding -> K SID tokens inside the model; the tokenizer file
    round-trips; frozen keeps the codebooks, fine-tuning returns the tokenizer's losses as aux."""
    from store_rec.tokenizer.online import load_tokenizer, save_tokenizer

    torch.manual_seed(0)
    schema = tiny_schema(with_sids=False)
    tok = _opmq(8)
    path = tmp_path / "tok.pt"
    save_tokenizer(path, tok, "opmq")
    again, method = load_tokenizer(path)
    x = torch.randn(32, 8)
    assert method == "opmq" and torch.equal(again.encode(x), tok.encode(x))

    att = {"num_heads": 2, "ffn_dim": 16, "block_size": 2, "gate": "item"}
    cfg = _cfg(sid_source="online", item_feature="item", attention=att,
               online={"tokenizer": str(path), "finetune": finetune, "token_mode": "latent" if finetune else "codes"})
    model = build_model(cfg, schema)
    inter = model.model.inter_arch
    # [dense, site, item's 2 SIDs, rot_user, rot_context]; the item gate is the mean of its SID tokens
    assert inter.seq_len == 6 and inter.gate_pos.tolist() == [2, 3]
    before = {k: v.clone() for k, v in inter.sid_tokenizer.tokenizer.state_dict().items()}
    batch = tiny_batch(schema, 16)
    model.train()
    logits, aux = model(batch)
    assert logits.shape == (16,)
    if finetune:
        assert {"sid_recon", "sid_commit"} <= set(aux) and all(torch.isfinite(v) for v in aux.values())
        assert model.aux_loss_weights()["sid_recon"] == 1.0
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels) + sum(aux.values())
        loss.backward()
        enc = inter.sid_tokenizer.tokenizer.experts[0][0].weight.grad
        assert enc is not None and enc.abs().sum() > 0  # gradients reach the experts (straight-through)
    else:
        assert set(aux) == {"diversity"}
        logits.sum().backward()
        assert all(p.grad is None for p in inter.sid_tokenizer.tokenizer.parameters())
        after = inter.sid_tokenizer.tokenizer.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # frozen: no EMA / restarts
        assert inter.sid_tokenizer.sid_emb.grad.abs().sum() > 0


def test_online_sid_config_errors(tmp_path):
    from store_rec.tokenizer.online import save_tokenizer

    schema = tiny_schema(with_sids=False)
    with pytest.raises(UserError, match="model.online.tokenizer"):
        build_model(_cfg(sid_source="online", item_feature="item"), schema)
    path = tmp_path / "tok.pt"
    save_tokenizer(path, _opmq(12), "opmq")
    with pytest.raises(UserError, match="input dim 12 != model.embedding_dim 8"):
        build_model(_cfg(sid_source="online", item_feature="item", online={"tokenizer": str(path)}), schema)
    save_tokenizer(path, _opmq(8), "opmq")
    with pytest.raises(UserError, match="holds a 'opmq' tokenizer, model.tokenizer is 'rqvae'"):
        build_model(_cfg(sid_source="online", item_feature="item", tokenizer="rqvae", online={"tokenizer": str(path)}), schema)
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(UserError, match="not a store_rec tokenizer file"):
        build_model(_cfg(sid_source="online", item_feature="item", online={"tokenizer": str(tmp_path / "bad.pt")}), schema)


@pytest.mark.parametrize("codebook_update", ["ema", "loss"])
def test_user_aux_weights_override_per_key_and_keep_online_sid_losses(tmp_path, codebook_update):
    """``loss.aux_weights: {diversity: 0.05}`` changes the diversity weight only: a fine-tuned online
    tokenizer's ``sid_*`` losses keep weight 1, for whatever loss names the tokenizer returns."""
    from store_rec.tokenizer import OPMQ
    from store_rec.tokenizer.online import save_tokenizer

    torch.manual_seed(0)
    schema = tiny_schema(with_sids=False)
    tok = OPMQ(8, 2, 4, hidden_dims=[8], latent_dim=4, codebook_update=codebook_update, orth_weight=0.1)
    tok(torch.randn(64, 8))
    save_tokenizer(tmp_path / "tok.pt", tok.eval(), "opmq")
    cfg = _cfg(sid_source="online", item_feature="item",
               online={"tokenizer": str(tmp_path / "tok.pt"), "finetune": True, "token_mode": "latent"})
    model = build_model(cfg, schema)
    model.train()
    batch = tiny_batch(schema, 16)
    _, aux = model(batch)
    sid_keys = {k for k in aux if k.startswith("sid_")}
    expected_sid = {"sid_recon", "sid_commit", "sid_orth"} | ({"sid_codebook"} if codebook_update == "loss" else set())
    assert sid_keys == expected_sid
    # returned by the arch's forward (return_losses=True / interact) in train mode only
    arch = model.model.inter_arch
    assert arch.sid_loss_names() == tuple(k for k in aux if k.startswith("sid_"))
    model.eval()
    assert arch.sid_loss_names() == () and not any(k.startswith("sid_") for k in model(batch).aux_losses)
    model.train()
    assert model.aux_loss_weights() == {"diversity": 0.1, **{k: 1.0 for k in sid_keys}}
    train = RankingTrain(model, aux_weights={"diversity": 0.05})
    assert train.aux_weights == {"diversity": 0.05, **{k: 1.0 for k in sid_keys}}
    assert RankingTrain(model).aux_weights == model.aux_loss_weights()
    assert RankingTrain(model, aux_weights={"sid_recon": 0.0}).aux_weights["sid_recon"] == 0.0
