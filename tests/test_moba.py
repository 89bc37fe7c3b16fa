"""MoBA block-sparse attention: fast == reference == dense, locality, topk arithmetic, FLOPs."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from store_rec.ops.flops import (
    dense_attention_flops,
    matmul_flops,
    moba_attention_flops,
    num_blocks,
    projection_flops,
    topk_for,
)
from store_rec.ops.moba import BlockSparseAttention, _block_means, moba_attention, route, selection_mask

ROUTINGS = ["query", "query_block", "instance"]
ATOL = 1e-5


def _qkv(B=2, H=3, L=37, Dh=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, L, Dh, generator=g).requires_grad_(True) for _ in range(3)]


def _run(impl, q, k, v, **kw):
    out = moba_attention(q, k, v, impl=impl, **kw)
    grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.shape[-1])).sum(), (q, k, v))
    return out, grads


@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("L", [37, 40])  # 37: last block padded (block_size 8)
def test_fast_equals_reference(routing, sparsity, L):
    q, k, v = _qkv(L=L)
    kw = dict(block_size=8, sparsity=sparsity, routing=routing)
    out_r, g_r = _run("reference", q, k, v, **kw)
    out_f, g_f = _run("fast", q, k, v, **kw)
    assert out_f.shape == q.shape
    torch.testing.assert_close(out_f, out_r, atol=ATOL, rtol=0)
    for a, b in zip(g_f, g_r):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@pytest.mark.parametrize("routing", ["query", "query_block"])
def test_own_block_option(routing):
    q, k, v = _qkv(L=37)
    kw = dict(block_size=8, sparsity=0.75, routing=routing, own_block=True)
    out_r, g_r = _run("reference", q, k, v, **kw)
    out_f, g_f = _run("fast", q, k, v, **kw)
    torch.testing.assert_close(out_f, out_r, atol=ATOL, rtol=0)
    for a, b in zip(g_f, g_r):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    sel = route(q, k, block_size=8, topk=topk_for(0.75, 5), routing=routing, own_block=True)
    mask = selection_mask(sel, 37, 8, routing)  # [B, H, L, nb]
    own = torch.arange(37) // 8
    assert mask[:, :, torch.arange(37), own].all()
    with pytest.raises(ValueError):
        moba_attention(q, k, v, block_size=8, sparsity=0.5, routing="instance", own_block=True)


def test_instance_gate_vector():
    q, k, v = _qkv(L=37)
    gate = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(5))
    kw = dict(block_size=8, sparsity=0.5, routing="instance", gate=gate)
    out_r, g_r = _run("reference", q, k, v, **kw)
    out_f, g_f = _run("fast", q, k, v, **kw)
    torch.testing.assert_close(out_f, out_r, atol=ATOL, rtol=0)
    for a, b in zip(g_f, g_r):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    # the selection is the top-k of gate . mean block key
    kbar = torch.stack([k.detach()[:, :, i * 8 : min(37, i * 8 + 8)].mean(2) for i in range(5)], dim=2)
    expect = (gate.unsqueeze(2) @ kbar.transpose(-1, -2)).squeeze(2).topk(3, dim=-1).indices.sort(-1).values
    sel = route(q, k, block_size=8, topk=3, routing="instance", gate=gate)
    assert torch.equal(sel[:, :, 0], expect)
    with pytest.raises(ValueError):
        moba_attention(q, k, v, block_size=8, sparsity=0.5, routing="query", gate=gate)


@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_sparsity_zero_is_dense(routing, impl):
    q, k, v = _qkv(L=37)
    out, grads = _run(impl, q, k, v, block_size=8, sparsity=0.0, routing=routing)
    ref = F.scaled_dot_product_attention(q, k, v)
    ref_g = torch.autograd.grad((ref * torch.linspace(-1, 1, ref.shape[-1])).sum(), (q, k, v))
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    for a, b in zip(grads, ref_g):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_block_means_ignore_padding():
    k = torch.arange(1.0, 6.0).view(1, 1, 5, 1)  # keys 1..5, blocks of 2: [1,2] [3,4] [5,pad]
    torch.testing.assert_close(_block_means(k, 2).flatten(), torch.tensor([1.5, 3.5, 5.0]))


@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_query_attends_only_selected_blocks(routing, impl):
    B, H, L, Dh, bs = 1, 2, 37, 8, 8
    q, k, v = [t.detach() for t in _qkv(B=B, H=H, L=L, Dh=Dh, seed=3)]
    kw = dict(block_size=bs, sparsity=0.6, routing=routing, impl=impl)
    nb = num_blocks(L, bs)
    sel = route(q, k, block_size=bs, topk=topk_for(0.6, nb), routing=routing)
    allowed = selection_mask(sel, L, bs, routing)[0, 0]  # head 0: [L, nb]
    i = 20
    unselected = int((~allowed[i]).nonzero()[0])
    selected = int(allowed[i].nonzero()[0])
    base = moba_attention(q, k, v, **kw)

    def perturb(block):
        # new values, and the block's keys permuted (same block mean -> same routing)
        k2, v2 = k.clone(), v.clone()
        rows = torch.arange(block * bs, min(L, block * bs + bs))
        k2[:, :, rows] = k[:, :, rows.flip(0)]
        v2[:, :, rows] = v[:, :, rows] + 10.0 * torch.randn(B, H, len(rows), Dh)
        assert torch.equal(route(q, k2, block_size=bs, topk=sel.shape[-1], routing=routing), sel)
        return moba_attention(q, k2, v2, **kw)

    assert torch.equal(perturb(unselected)[0, 0, i], base[0, 0, i])
    assert not torch.allclose(perturb(selected)[0, 0, i], base[0, 0, i], atol=1e-3)


def test_topk_arithmetic():
    assert num_blocks(37, 8) == 5 and num_blocks(40, 8) == 5 and num_blocks(1, 8) == 1
    assert topk_for(0.5, 8) == 4
    assert topk_for(0.5, 3) == 2  # 1.5 rounds half up
    assert topk_for(0.75, 3) == 1  # 0.75 -> 1
    assert topk_for(0.25, 6) == 5  # 4.5 -> 5
    assert topk_for(0.95, 4) == 1  # never 0
    assert topk_for(0.0, 5) == 5
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError):
            topk_for(bad, 4)


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.75])
def test_flops_ratio_attention_part(sparsity):
    B, H, L, Dh, bs = 32, 4, 512, 32, 64
    f = moba_attention_flops(B, H, L, Dh, block_size=bs, sparsity=sparsity, routing="instance")
    dense = dense_attention_flops(B, H, L, Dh)
    assert dense / f["attention"] == pytest.approx(1 / (1 - sparsity), rel=1e-12)
    assert dense / f["total"] == pytest.approx(1 / (1 - sparsity), rel=0.01)  # gate is small
    qb = moba_attention_flops(B, H, L, Dh, block_size=bs, sparsity=sparsity, routing="query_block")
    assert qb["attention"] == f["attention"]
    # query routing's fast path is a masked dense SDPA: no saving, counted honestly
    qf = moba_attention_flops(B, H, L, Dh, block_size=bs, sparsity=sparsity, routing="query")
    assert qf["attention"] == dense
    assert moba_attention_flops(B, H, L, Dh, block_size=bs, sparsity=0.0)["total"] == dense
    assert dense == 4 * B * H * L * L * Dh * 7 // 2  # fwd 4BHL^2Dh, flash backward 2.5x


def test_flop_counter_sees_projections_but_not_cpu_sdpa():
    B, L, D, H = 2, 16, 16, 2
    m = BlockSparseAttention(D, H, dense=True)
    x = torch.randn(B, L, D, requires_grad=True)
    with FlopCounterMode(display=False) as fc:
        m(x).sum().backward()
    # CPU SDPA counts 0: the counter sees exactly the (analytic) projection FLOPs
    assert fc.get_total_flops() == projection_flops(B, L, D, backward=True)
    assert m.flops(B, L) == projection_flops(B, L, D) + dense_attention_flops(B, H, L, D // H)
    assert m.tflops_per_batch(L) == pytest.approx(m.flops(1024, L) / 1e12)
    # the reference op is plain matmuls: the counter agrees with the analytic forward count
    q, k, v = [t.detach() for t in _qkv(B=2, H=2, L=32, Dh=8)]
    with FlopCounterMode(display=False) as fc:
        moba_attention(q, k, v, block_size=8, sparsity=0.5, routing="query", impl="reference")
    gate_mm = 2 * 2 * matmul_flops(32, 4, 8)
    assert fc.get_total_flops() == dense_attention_flops(2, 2, 32, 8, backward=False) + gate_mm


@pytest.mark.parametrize("routing", ROUTINGS)
def test_module_fast_equals_reference_and_grads(routing):
    torch.manual_seed(0)
    fast = BlockSparseAttention(16, 2, block_size=4, sparsity=0.5, routing=routing, impl="fast")
    ref = copy.deepcopy(fast)
    ref.impl = "reference"
    x = torch.randn(3, 13, 16)
    gate = torch.randn(3, 16) if routing == "instance" else None
    outs = []
    for m in (fast, ref):
        y = m(x, gate)
        assert y.shape == (3, 13, 16)
        (y * torch.linspace(-1, 1, 16)).sum().backward()
        outs.append(y)
    torch.testing.assert_close(outs[0], outs[1], atol=ATOL, rtol=0)
    for (n, p), p2 in zip(fast.named_parameters(), ref.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, n
        torch.testing.assert_close(p.grad, p2.grad, atol=ATOL, rtol=0)
    m = BlockSparseAttention(16, 2, block_size=4, routing=routing)
    if routing != "instance":
        with pytest.raises(ValueError):
            m(x, torch.randn(3, 16))


def test_module_dense_equals_multihead_attention():
    torch.manual_seed(0)
    D, H = 16, 4
    ours = BlockSparseAttention(D, H, dense=True)
    mha = nn.MultiheadAttention(D, H, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(ours.in_proj.weight)
        mha.in_proj_bias.copy_(ours.in_proj.bias)
        mha.out_proj.weight.copy_(ours.out_proj.weight)
        mha.out_proj.bias.copy_(ours.out_proj.bias)
    x = torch.randn(2, 11, D)
    expect, _ = mha(x, x, x, need_weights=False)
    torch.testing.assert_close(ours(x), expect, atol=ATOL, rtol=0)
    sparse0 = BlockSparseAttention(D, H, block_size=4, sparsity=0.0)
    sparse0.load_state_dict(ours.state_dict())
    torch.testing.assert_close(sparse0(x), expect, atol=ATOL, rtol=0)


def test_module_bad_arguments():
    with pytest.raises(ValueError):
        BlockSparseAttention(10, 3)
    with pytest.raises(ValueError):
        BlockSparseAttention(16, 2, sparsity=1.0)
    with pytest.raises(ValueError):
        BlockSparseAttention(16, 2, routing="token")
    with pytest.raises(ValueError):
        BlockSparseAttention(16, 2, impl="flash")
    assert BlockSparseAttention(16, 2, routing="block").routing == "query_block"  # config alias


def test_query_block_many_blocks_backward():
    # > 32 key blocks: the gather backward switches from a one-hot matmul to index_add_
    q, k, v = _qkv(B=1, H=2, L=69, Dh=4)
    kw = dict(block_size=2, sparsity=0.5, routing="query_block")
    out_r, g_r = _run("reference", q, k, v, **kw)
    out_f, g_f = _run("fast", q, k, v, **kw)
    torch.testing.assert_close(out_f, out_r, atol=ATOL, rtol=0)
    for a, b in zip(g_f, g_r):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_moba_rules_defined_once_config_and_op_agree():
    """store_rec.ops.moba_rules is the one definition: the config names the key, the public op/module the argument."""
    from store_rec.config import ConfigError
    from store_rec.models.config import AttentionConfig
    from store_rec.ops.moba_rules import moba_problem

    ok = dict(block_size=4, sparsity=0.5, routing="query", own_block=False, impl="fast")
    assert moba_problem(**ok) is None
    q = torch.zeros(1, 1, 8, 4)
    for key, bad in (("block_size", 0), ("sparsity", 1.0), ("sparsity", -0.1), ("own_block", True)):
        kw = {**ok, key: bad, **({"routing": "instance"} if key == "own_block" else {})}
        name, msg = moba_problem(**kw)
        assert name == key
        with pytest.raises(ConfigError, match=f"^{key}: "):
            AttentionConfig(**kw)
        with pytest.raises(ValueError, match=f"^{key} "):
            BlockSparseAttention(8, 2, **kw)
        with pytest.raises(ValueError, match=f"^{key} "):
            moba_attention(q, q, q, **kw)
    assert moba_problem(**{**ok, "routing": "token"})[0] == "routing"
    assert moba_problem(**{**ok, "impl": "flash"})[0] == "impl"
