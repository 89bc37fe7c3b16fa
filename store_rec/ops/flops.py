"""Analytic FLOPs of dense attention and MoBA (what actually runs), fwd and fwd+bwd.

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
from typing import Dict

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


def projection_flops(batch: int, seq_len: int, embed_dim: int, *, backward: bool = True) -> int:
    """q/k/v/out projections of self-attention: ``4 * 2 * B * L * D^2`` forward, x3 with backward."""
    fwd = 4 * matmul_flops(batch * seq_len, embed_dim, embed_dim)
    return fwd * (3 if backward else 1)


def _core(batch: int, heads: int, lq: int, lk: int, head_dim: int, backward: bool) -> int:
    fwd = batch * heads * 2 * matmul_flops(lq, lk, head_dim)
    return fwd + (fwd * 5 // 2 if backward else 0)


def dense_attention_flops(batch: int, heads: int, seq_len: int, head_dim: int, *, backward: bool = True) -> int:
    """Dense (SDPA) attention core: ``4 B H L^2 Dh`` forward, x3.5 with the flash backward."""
    return _core(batch, heads, seq_len, seq_len, head_dim, backward)


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
