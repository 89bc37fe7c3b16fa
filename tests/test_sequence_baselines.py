"""Sequence baselines (issue 13): DIN target attention, DLRM with mean-pooled history bags."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from store_rec.models.config import ModelConfig
from store_rec.models.sequence_baselines import DLRM_DIN, TargetAttentionPooling


class _StandInEncoder(nn.Module):
    """Test stand-in for ``store_rec.models.history.HistoryEncoder`` (the contract's interface):
    ``forward(kjt) -> (tokens Tensor[B, N*T, D], valid Tensor[B, N])``, left-padded to N, T keys."""

    def __init__(self, keys, vocab: int, dim: int, max_len: int) -> None:
        super().__init__()
        self.keys, self.max_len = list(keys), max_len
        self.emb = nn.ModuleList(nn.Embedding(vocab, dim) for _ in self.keys)

    def forward(self, kjt: KeyedJaggedTensor):  # noqa: ANN201
        d = kjt.to_dict()
        per_key = []
        for key, emb in zip(self.keys, self.emb):
            jt = d[key]
            rows = []
            for ids in jt.to_dense():
                ids = ids[-self.max_len:]
                pad = torch.zeros(self.max_len - len(ids), dtype=torch.long)
                rows.append(torch.cat([pad, ids.long()]))
            per_key.append(emb(torch.stack(rows)))  # [B, N, D]
        lengths = d[self.keys[0]].lengths().clamp(max=self.max_len)
        N = self.max_len
        valid = torch.arange(N).unsqueeze(0) >= (N - lengths).unsqueeze(1)
        tokens = torch.stack(per_key, dim=2).flatten(1, 2)  # [B, N*T, D]: item-major, T tokens per item
        return type("HT", (), {"tokens": tokens, "valid": valid})()


def test_target_attention_weights_sum_to_one_over_valid_items_and_ignore_padding():
    torch.manual_seed(0)
    B, N, E = 3, 5, 8
    att = TargetAttentionPooling(E, hidden=(16,))
    items = torch.randn(B, N, E, requires_grad=True)
    target = torch.randn(B, E)
    valid = torch.tensor([[False, False, True, True, True], [True] * 5, [False] * 5])
    pooled, w = att(items, valid, target)
    sums = w.sum(1)
    assert sums[0].item() == pytest.approx(1.0, abs=1e-6) and sums[1].item() == pytest.approx(1.0, abs=1e-6)
    assert sums[2].item() == 0.0  # cold user: no valid item, no weight
    assert torch.all(w[~valid] == 0)
    assert torch.all(pooled[2] == 0)
    # the weights are DIN's scores, softmaxed over the valid items only
    s = att.scores(items, target)
    assert torch.allclose(w[0, 2:], torch.softmax(s[0, 2:], -1), atol=1e-6)
    # padding content never reaches the output
    items2 = items.detach().clone()
    items2[0, :2] = 1e3 * torch.randn(2, E)
    items2[2] = 7.0
    pooled2, _ = att(items2, valid, target)
    assert torch.allclose(pooled2, pooled.detach(), atol=1e-5)
    pooled.sum().backward()
    assert torch.isfinite(items.grad).all()
    assert torch.all(items.grad[0, :2] == 0) and torch.all(items.grad[2] == 0)
    assert items.grad[1].abs().sum() > 0


def _din(T: int, Q: int, D: int = 8, N: int = 4):
    names = [f"sid_{k}" for k in range(Q)] + ["user"]
    ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(name=f"t_{n}", embedding_dim=D, num_embeddings=10,
                                                            feature_names=[n]) for n in names])
    hist_keys = [f"hist_item_sid_{k}" for k in range(T)]
    enc = _StandInEncoder(hist_keys, 10, D, N)
    model = DLRM_DIN(ebc, enc, 2, [16, D], [16, 1], target_features=names[:Q], tokens_per_item=T, history_len=N,
                     attention_hidden=[12])
    return model, names, hist_keys


def _kjt(names, hist_keys, B: int, seed: int = 0) -> KeyedJaggedTensor:
    g = np.random.default_rng(seed)
    hist_len = g.integers(0, 7, B)  # some longer than N (truncated), some empty (cold)
    hist_len[0] = 0
    keys, lengths, values = [], [], []
    for n in names:
        keys.append(n)
        lengths += [1] * B
        values += list(g.integers(1, 10, B))
    for h in hist_keys:
        keys.append(h)
        lengths += list(hist_len)
        values += list(g.integers(1, 10, int(hist_len.sum())))
    return KeyedJaggedTensor.from_lengths_sync(keys, torch.tensor(values, dtype=torch.long), torch.tensor(lengths, dtype=torch.int32))


@pytest.mark.parametrize("T,Q", [(3, 3), (1, 2)])
def test_din_shapes_and_gradients(T, Q):
    torch.manual_seed(0)
    model, names, hist_keys = _din(T, Q)
    B = 6
    kjt = _kjt(names, hist_keys, B)
    out = model(torch.randn(B, 2), kjt)
    assert out.shape == (B, 1)
    assert torch.isfinite(out).all()
    out.sum().backward()
    for name, mod in (("attention", model.attention), ("encoder", model.history_encoder), ("dense", model.dense_arch),
                      ("ebc", model.sparse_arch)):
        grads = [p.grad for p in mod.parameters() if p.grad is not None]
        assert grads and sum(float(g.abs().sum()) for g in grads) > 0, name
    assert isinstance(model.query, nn.Linear if Q != T else nn.Identity)
    assert isinstance(model.history_out, nn.Linear if T > 1 else nn.Identity)
    # the history changes the prediction of a row that has one and not of the cold row 0
    kjt2 = _kjt(names, hist_keys, B, seed=0)
    d = kjt2.to_dict()
    vals = {k: (d[k].values() if not k.startswith("hist_") else (d[k].values() % 9) + 1) for k in kjt2.keys()}
    kjt3 = KeyedJaggedTensor.from_lengths_sync(kjt2.keys(), torch.cat([vals[k] for k in kjt2.keys()]), kjt2.lengths())
    dense = torch.randn(B, 2)
    with torch.no_grad():
        a, b = model(dense, kjt2), model(dense, kjt3)
    assert torch.equal(a[0], b[0])
    assert not torch.allclose(a[1:], b[1:])


def test_din_config_needs_history():
    from store_rec.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match="history.enabled"):
        from_dict(ModelConfig, {"name": "din"}, "model")
    cfg = from_dict(ModelConfig, {"name": "din", "history": {"enabled": True, "max_len": 16}, "din": {"attention_hidden": [8]}}, "model")
    assert cfg.history.max_len == 16 and cfg.din.attention_hidden == [8]


@pytest.fixture(scope="module")
def hist_data(tmp_path_factory):
    from store_rec.data.synthetic import prepare_synthetic

    out = tmp_path_factory.mktemp("seq") / "data"
    prepare_synthetic(out, rows=1500, items=60, users=30, seed=0, num_clusters=4, history_len=8)
    return out


def test_dlrm_mean_pools_the_history_in_its_ebc(hist_data):
    from store_rec.data.loader import ParquetBatchLoader
    from store_rec.models.factory import build_model
    from store_rec.models.tables import embedding_tables
    from store_rec.config import from_dict

    loader = ParquetBatchLoader(hist_data, "train", 32)
    schema = loader.schema
    plain = from_dict(ModelConfig, {"name": "dlrm", "tokenizer": "none"}, "model")
    hist = from_dict(ModelConfig, {"name": "dlrm", "tokenizer": "none",
                                   "history": {"enabled": True, "item_tokens": "id", "side": ["hist_category"]}}, "model")
    t_plain, t_hist = embedding_tables(schema, plain), embedding_tables(schema, hist)
    extra = t_hist[len(t_plain):]
    assert [t.name for t in t_hist[:len(t_plain)]] == [t.name for t in t_plain]
    assert [t.feature_names[0] for t in extra] == ["hist_item_id", "hist_category"]
    assert all(t.pooling == PoolingType.MEAN for t in extra)
    assert all(t.pooling == PoolingType.SUM for t in t_plain)
    model = build_model(hist, schema)
    batch = next(iter(loader))
    out = model(batch)
    assert out.logits.shape == (32,) and torch.isfinite(out.logits).all()
    # the mean-pooled bag of row i is the mean of its history items' rows (0 for an empty history)
    ebc = model.embedding_bag_collection
    pooled = ebc(batch.sparse_features)["hist_item_id"]
    jt = batch.sparse_features["hist_item_id"]
    w = ebc.embedding_bags["t_hist_item_id"].weight
    for i, ids in enumerate(jt.to_dense()):
        want = w[ids].mean(0) if len(ids) else torch.zeros(w.shape[1])
        assert torch.allclose(pooled[i], want, atol=1e-5)
    from store_rec.errors import UserError

    bad = from_dict(ModelConfig, {"name": "dlrm", "tokenizer": "none",
                                  "history": {"enabled": True, "item_tokens": "id", "side": ["hist_nope"]}}, "model")
    with pytest.raises(UserError, match="model.history.side"):
        embedding_tables(schema, bad)


def test_shipped_sequence_config_plans_paired_runs_that_validate(tmp_path):
    """configs/experiments/sequence.yaml: N in {0, 16, 64, 128}, the four models (the dense-attention one
    on the two time-ordered datasets), >= 3 paired seeds on every dataset, and every run's overrides form
    a valid training config."""
    from pathlib import Path

    from store_rec.experiments.runner import plan_runs
    from store_rec.experiments.spec import load_spec
    from store_rec.train.config import load_train_config

    root = Path(__file__).resolve().parents[1]
    spec = load_spec(str(root / "configs" / "experiments" / "sequence.yaml"))
    runs = plan_runs(spec, tmp_path / "out", build=False)
    assert {r.dataset for r in runs} == {"synthetic_hist", "movielens_matched", "video_hist"}
    seeds = {}
    for r in runs:
        seeds.setdefault((r.dataset, r.variant), set()).add(r.seed)
    assert all(s == {0, 1, 2} for s in seeds.values())
    for ds in ("synthetic_hist", "movielens_matched", "video_hist"):
        names = {v for d, v in seeds if d == ds}
        for n in (16, 64, 128):
            assert {f"STORE N={n}", f"DIN N={n}", f"DLRM mean-pooled N={n}"} <= names
            assert (f"STORE vanilla N={n}" in names) == (ds != "movielens_matched")
        assert {"STORE N=0", "DLRM N=0", "STORE+FFN N=0", "STORE+FFN N=128"} <= names
    for r in runs[:: max(1, len(runs) // 12)]:
        ov = [o for o in r.overrides if not o.startswith(("data.sid_table=", "data.dir="))]
        cfg = load_train_config(str(root / "configs" / "experiments" / "base.yaml"), ov)
        n = next((int(o.split("=")[1]) for o in ov if o.startswith("data.history_len=")), None)
        assert cfg.data.history_len == n
        assert cfg.model.history.enabled == bool(n)
        if n:
            assert cfg.model.history.max_len == n


def test_din_built_by_the_factory_trains_on_loader_batches(hist_data):
    """``model.name: din`` through build_model: the real HistoryEncoder (an EmbeddingCollection), raw-ID
    item tokens (T = 1), the target's raw ID as the query; a few Adam steps lower the training loss."""
    from store_rec.config import from_dict
    from store_rec.data.loader import ParquetBatchLoader
    from store_rec.models.factory import build_model
    from store_rec.models.ranking import RankingTrain
    from store_rec.models.sequence_baselines import SequenceBaseline

    loader = ParquetBatchLoader(hist_data, "train", 64)
    cfg = from_dict(ModelConfig, {"name": "din", "tokenizer": "none", "item_feature": "item_id",
                                  "history": {"enabled": True, "max_len": 8, "item_tokens": "id", "side": ["hist_category"]}},
                    "model")
    torch.manual_seed(0)
    model = build_model(cfg, loader.schema)
    assert isinstance(model, SequenceBaseline) and model.embedding_collection is not None
    assert model.model.tokens_per_item == 1 and model.model.history_len == 8
    names = model.model.sparse_arch.sparse_feature_names
    assert [names[i] for i in model.model.target_index.tolist()] == ["item_id"]
    from store_rec.ops.flops import model_flops

    assert model_flops(model, 1024) > 0
    batch = next(iter(loader))
    train = RankingTrain(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss, out = train(batch)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert out.logits.shape == (64,)
    assert losses[-1] < losses[0]
