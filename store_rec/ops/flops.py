"""FLOPs counting, in one place: analytic FLOPs of dense attention and MoBA (what actually runs), fwd
and fwd+bwd, and the FLOPs of whole models (:func:`model_flops`, :func:`interaction_flops`: torch's
``FlopCounterMode`` for everything but attention, which the models declare through
``analytic_flops_modules()``).

torch's ``FlopCounterMode`` counts **0** FLOPs for ``F.scaled_dot_product_attention`` on CPU (checked
on torch 2.13: fwd+bwd of SDPA, with and without a mask, reports 0, while the same attention written
as explicit matmuls is counted), so the attention core is counted here analytically; the projections
are plain ``nn.Linear`` and agree with ``FlopCounterMode`` (``tests/test_moba.py`` checks it).

Conventions:

* A matmul ``[m, k] @ [k, n]`` is ``2 * m * n * k`` FLOPs. Softmax, scaling, masking and dropout are
  not counted (O(L^2) elementwise against O(L^2 * Dh) for the matmuls).
* Linear layers: backward = 2 x forward (grad input + grad weight); bias adds are not counted.
* Attention core, forward: ``S = Q K^T`` and ``O = P V`` = ``4 * Lq * Lk * Dh`` per (batch, head).
  Backward as the fused (flash) CPU/GPU kernels run it: recompute ``S``, then ``dV = P^T dO``,
  ``dP = dO V^T``, ``dQ = dS K``, ``dK = dS^T Q`` = 5 matmuls = 2.5 x forward. Dense SDPA and the MoBA
  fast path both call SDPA, so their ratio does not depend on this choice.
* MoBA gate (forward only; the router is not differentiable): block-mean pooling of keys (and of
  queries for the pooled routings) at 1 FLOP per element summed, plus the gate matmul
  ``2 * G * num_blocks * Dh`` per (batch, head), G = number of routing groups.
* ``Lk`` counts the keys that the kernel actually multiplies: the ``topk`` selected blocks of
  ``block_size`` keys (padding slots of the last block included when it is selected, as they run).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Mapping, Optional

import torch
from torch import nn

ROUTINGS = ("query", "query_block", "instance")


def matmul_flops(m: int, n: int, k: int) -> int:
    """``[m, k] @ [k, n]``: ``2 * m * n * k``."""
    return 2 * int(m) * int(n) * int(k)


def num_blocks(seq_len: int, block_size: int) -> int:
    """Key blocks of ``block_size`` covering ``seq_len`` keys (the last one padded)."""
    return -(-int(seq_len) // int(block_size))


def topk_for(sparsity: float, n_blocks: int) -> int:
    """Blocks each query attends to: ``max(1, floor((1 - sparsity) * n_blocks + 0.5))``.

    Rounds half up (not Python's banker's rounding), so e.g. 3 blocks at sparsity 0.5 keep 2.
    The effective sparsity is ``1 - topk / n_blocks``.
    """
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if n_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {n_blocks}")
    return max(1, min(int(n_blocks), int(math.floor((1.0 - float(sparsity)) * n_blocks + 0.5))))


def projection_flops(batch: int, seq_len: int, embed_dim: int, *, backward: bool = True,
                     queries: Optional[int] = None) -> int:
    """q/k/v/out projections of self-attention: ``4 * 2 * B * L * D^2`` forward, x3 with backward.
    ``queries`` (default ``seq_len``): tokens whose query and output are computed (k/v: all L)."""
    lq = seq_len if queries is None else queries
    fwd = 2 * matmul_flops(batch * seq_len, embed_dim, embed_dim) + 2 * matmul_flops(batch * lq, embed_dim, embed_dim)
    return fwd * (3 if backward else 1)


def _core(batch: int, heads: int, lq: int, lk: int, head_dim: int, backward: bool) -> int:
    fwd = batch * heads * 2 * matmul_flops(lq, lk, head_dim)
    return fwd + (fwd * 5 // 2 if backward else 0)


def dense_attention_flops(batch: int, heads: int, seq_len: int, head_dim: int, *, backward: bool = True) -> int:
    """Dense (SDPA) attention core: ``4 B H L^2 Dh`` forward, x3.5 with the flash backward."""
    return _core(batch, heads, seq_len, seq_len, head_dim, backward)


def mha_flops(batch: int, seq_len: int, embed_dim: int, heads: int, *, backward: bool = True) -> int:
    """One ``nn.MultiheadAttention`` over ``seq_len`` tokens (the transformer baseline): q/k/v/out
    projections + dense attention core, with the conventions above (the ones STORE's attention is
    counted with)."""
    return projection_flops(batch, seq_len, embed_dim, backward=backward) + dense_attention_flops(
        batch, heads, seq_len, embed_dim // heads, backward=backward)


def moba_attention_flops(
    batch: int,
    heads: int,
    seq_len: int,
    head_dim: int,
    *,
    block_size: int,
    sparsity: float,
    routing: str = "instance",
    impl: str = "fast",
    backward: bool = True,
) -> Dict[str, int]:
    """MoBA attention core FLOPs as ``{"gate", "attention", "total"}`` for the given ``impl``.

    * ``impl="dense"`` or ``sparsity`` giving ``topk == num_blocks``: dense SDPA, no gate.
    * ``impl="reference"``: dense scores + block mask (it computes every score; L x L).
    * ``impl="fast"``: ``instance`` -> L queries x (topk * block_size) keys; ``query_block`` -> each
      padded query block x its (topk * block_size) keys; ``query`` -> masked dense SDPA (L x L; the
      per-query selection saves no FLOPs in this implementation, see ``store_rec.ops.moba``).
    """
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    nb = num_blocks(seq_len, block_size)
    k = topk_for(sparsity, nb)
    if impl == "dense" or k == nb:
        att = dense_attention_flops(batch, heads, seq_len, head_dim, backward=backward)
        return {"gate": 0, "attention": att, "total": att}
    if impl not in ("fast", "reference"):
        raise ValueError(f"impl must be 'reference', 'fast' or 'dense', got {impl!r}")
    bh = batch * heads
    groups = {"query": seq_len, "query_block": nb, "instance": 1}[routing]
    pooled = seq_len * head_dim * (1 if routing == "query" else 2)  # key (+ query) block means
    gate = bh * (pooled + matmul_flops(groups, nb, head_dim))
    if impl == "reference" or routing == "query":
        att = _core(batch, heads, seq_len, seq_len, head_dim, backward)
    elif routing == "instance":
        att = _core(batch, heads, seq_len, k * block_size, head_dim, backward)
    else:  # query_block: nb groups of block_size (padded) queries, each against its k blocks
        att = _core(batch * nb, heads, block_size, k * block_size, head_dim, backward)
    return {"gate": gate, "attention": att, "total": gate + att}


def history_attention_flops(
    batch: int,
    heads: int,
    seq_len: int,
    head_dim: int,
    *,
    history: int,
    block_size: int,
    sparsity: float,
    impl: str = "fast",
    backward: bool = True,
    queries: Optional[int] = None,
) -> Dict[str, int]:
    """Attention core FLOPs of ``store_rec.ops.moba.history_attention`` as ``{"gate", "attention", "total"}``.

    ``seq_len`` L tokens of which the first ``history`` R are routed in ``R / block_size`` blocks and the
    last ``L - R`` always attended; ``queries`` Lq of them attend (default L; ``L - R`` in a last
    layer). ``impl="dense"`` or ``topk == num_blocks``: dense SDPA, Lq x L (padding keys are masked,
    not skipped: they run). ``"fast"``: Lq queries x (``topk * block_size + L - R``) keys, plus the
    gate: valid-key block means (``R * Dh``), the mean fixed query (``(L - R) * Dh``) and
    ``2 * num_blocks * Dh`` for the scores, per (batch, head). ``"reference"``: the gate + Lq x L.
    """
    lq = seq_len if queries is None else int(queries)
    if impl == "dense":
        att = _core(batch, heads, lq, seq_len, head_dim, backward)
        return {"gate": 0, "attention": att, "total": att}
    if history % block_size or not history:
        raise ValueError(f"block_size {block_size} must divide the {history} history tokens")
    nb = history // block_size
    k = topk_for(sparsity, nb)
    if k == nb:
        att = _core(batch, heads, lq, seq_len, head_dim, backward)
        return {"gate": 0, "attention": att, "total": att}
    if impl not in ("fast", "reference"):
        raise ValueError(f"impl must be 'reference', 'fast' or 'dense', got {impl!r}")
    gate = batch * heads * (seq_len * head_dim + matmul_flops(1, nb, head_dim))
    lk = seq_len if impl == "reference" else k * block_size + seq_len - history
    att = _core(batch, heads, lq, lk, head_dim, backward)
    return {"gate": gate, "attention": att, "total": gate + att}


# ------------------------------------------------------------------------------------ whole models
FlopsFn = Callable[[int, bool], int]  # (batch_size, backward) -> FLOPs


def count_flops(root: nn.Module, step: Callable[[int], torch.Tensor], analytic: Mapping[nn.Module, FlopsFn],
                batch_size: int, backward: bool = True, owner: Optional[nn.Module] = None) -> int:
    """FLOPs of ``step(b)`` (a forward of ``root`` on ``b`` synthetic samples, plus its backward when
    ``backward``) on ``batch_size`` samples.

    ``torch.utils.flop_counter.FlopCounterMode`` counts every op, except that the modules in
    ``analytic`` (attention: the counter sees 0 for CPU SDPA) are replaced by their analytic count.
    Everything counted is linear in the batch, so it runs at a batch of 4 and scales exactly.
    ``root`` is the outermost module ``step`` calls that holds the ``analytic`` ones (the counter names
    modules from there); ``owner`` (default ``root``) is run in train mode and has its grads cleared.
    """
    from torch.utils.flop_counter import FlopCounterMode

    b0 = 4
    owner = root if owner is None else owner
    was_training = owner.training
    owner.train()
    counter = FlopCounterMode(display=False)
    with counter:
        out = step(b0)
        if backward:
            out.sum().backward()
    owner.train(was_training)
    owner.zero_grad(set_to_none=True)
    totals = counter.get_flop_counts()
    # the counter names modules from the outermost module it saw: ``root``
    names = {id(m): f"{type(root).__name__}.{n}" for n, m in root.named_modules() if n}
    seen_in_analytic = 0
    for m in analytic:
        if names.get(id(m)) not in totals:
            raise RuntimeError(f"FlopCounterMode did not see attention module {names.get(id(m))}")
        seen_in_analytic += sum(totals[names[id(m)]].values())
    per_sample = (counter.get_total_flops() - seen_in_analytic) / b0
    return int(round(per_sample * batch_size)) + sum(int(fn(batch_size, backward)) for fn in analytic.values())


def analytic_flops(module: nn.Module, batch_size: int, backward: bool = True) -> int:
    """The analytically counted part alone: the sum over ``module.analytic_flops_modules()`` (for
    STORE's interaction arch: its attention modules' projections + cores)."""
    return sum(int(fn(batch_size, backward)) for fn in module.analytic_flops_modules().values())


def interaction_flops(arch: nn.Module, batch_size: int, backward: bool = True) -> int:
    """FLOPs of one fwd(+bwd) of an interaction arch (``arch(dense_features=Tensor[B, D],
    sparse_features=Tensor[B, F, D])``, with ``embedding_dim``, ``num_sparse_features`` and
    ``analytic_flops_modules()``, e.g. ``StoreInteractionArch``) on ``batch_size`` samples
    (:func:`count_flops` on random inputs; with ``history_items`` also random history tokens)."""
    ref = next(iter(arch.parameters()))
    D, F = int(arch.embedding_dim), int(arch.num_sparse_features)

    n_hist, t_hist = int(getattr(arch, "history_items", 0)), int(getattr(arch, "history_item_tokens", 1))

    def step(b: int) -> torch.Tensor:
        dense = torch.randn(b, D, device=ref.device, dtype=ref.dtype, requires_grad=backward)
        sparse = torch.randn(b, F, D, device=ref.device, dtype=ref.dtype, requires_grad=backward)
        if not n_hist:
            return arch(dense_features=dense, sparse_features=sparse)
        # behaviour sequences: random history tokens, every item valid
        hist = torch.randn(b, n_hist * t_hist, D, device=ref.device, dtype=ref.dtype, requires_grad=backward)
        valid = torch.ones(b, n_hist, dtype=torch.bool, device=ref.device)
        return arch(dense_features=dense, sparse_features=sparse, history=hist, history_valid=valid)

    return count_flops(arch, step, arch.analytic_flops_modules(), batch_size, backward)


def model_flops(model: nn.Module, batch_size: int, backward: bool = True) -> int:
    """FLOPs of one training step (forward + backward) of a ranking model on ``batch_size`` samples.

    ``model`` is a :class:`store_rec.models.ranking.RankingModel` (STORE or a baseline): what runs
    after the embedding lookups (``model.dense_step``: dense arch, interaction, over arch) is counted
    by :func:`count_flops` on synthetic inputs (works with a meta-device EBC: call it on the
    unsharded model); the modules of ``model.analytic_flops_modules()`` (attention) analytically.
    Embedding-bag pooling is not counted.
    """
    ref = next(p for p in model.model.over_arch.parameters())
    dev, dt = ref.device, ref.dtype
    configs = model.embedding_bag_collection.embedding_bag_configs()
    D = configs[0].embedding_dim
    F = sum(len(c.feature_names) for c in configs)
    dense_in = 1 if model.const_dense else model.dense_in_features

    def step(b: int) -> torch.Tensor:
        dense = torch.randn(b, dense_in, device=dev, dtype=dt)
        sparse = torch.randn(b, F, D, device=dev, dtype=dt, requires_grad=backward)
        return model.dense_step(dense, sparse)

    return count_flops(model.model.inter_arch, step, model.analytic_flops_modules(), batch_size, backward, owner=model)


def tflops_per_batch(model: nn.Module, batch_size: int = 1024, backward: bool = True) -> float:
    """``model_flops(model, batch_size) / 1e12`` (the paper reports TFLOPs per batch of 1024)."""
    return model_flops(model, batch_size, backward=backward) / 1e12
