"""Seeded k-means / k-means++ in torch, identical on every rank when ``torch.distributed`` is initialised.

Distributed behaviour: the k-means++ seeding runs on rank 0's data and the seeds are broadcast; every
Lloyd iteration all-reduces (sums) the per-centroid sums and counts, so all ranks end with the same
centroids computed from the union of their data.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


def _dist() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def sq_dists(x: Tensor, c: Tensor) -> Tensor:
    """``x: Tensor[N, e]``, ``c: Tensor[C, e]`` -> squared distances ``Tensor[N, C]`` (||x||^2 - 2xc + ||c||^2)."""
    return (x * x).sum(1, keepdim=True) - 2.0 * (x @ c.t()) + (c * c).sum(1)[None, :]


#: rows per chunk of the assignment step (bounds the ``[rows, k]`` distance temporary; page-faulting a fresh
#: ``[N, k]`` tensor every Lloyd iteration dominated OPQ training time: 291 s -> see docs/TOKENIZER.md)
ASSIGN_CHUNK = 16384


def nearest_centroid(x: Tensor, c: Tensor, chunk: int = ASSIGN_CHUNK) -> Tensor:
    """``argmin_j ||x_i - c_j||^2`` for ``x: Tensor[N, e]``, ``c: Tensor[k, e]`` -> ``LongTensor[N]``.

    Computed as ``argmin_j (||c_j||^2 - 2 x_i . c_j)`` (``||x_i||^2`` is constant per row) in row chunks of
    ``chunk``, so the temporary is ``[chunk, k]`` whatever N is.
    """
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    cn = (c * c).sum(1)
    ct = c.t()
    for i in range(0, x.shape[0], chunk):
        out[i:i + chunk] = torch.addmm(cn, x[i:i + chunk], ct, alpha=-2.0).argmin(1)
    return out


def kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding: ``x: Tensor[N, e]`` -> ``Tensor[k, e]`` (rows of x; repeats only if N < k)."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    cent = [x[first]]
    d2 = sq_dists(x, x[first:first + 1]).squeeze(1).clamp_min(0)
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:
            idx = int(torch.randint(n, (1,), generator=generator))
        else:  # inverse-CDF draw with probability d2 / total (torch.multinomial is ~50x slower at N=200k)
            cdf = torch.cumsum(d2.double(), 0)
            u = torch.rand(1, generator=generator, dtype=torch.float64) * cdf[-1]
            idx = min(int(torch.searchsorted(cdf, u, right=True)), n - 1)
        cent.append(x[idx])
        d2 = torch.minimum(d2, sq_dists(x, x[idx:idx + 1]).squeeze(1).clamp_min(0))
    return torch.stack(cent)


@torch.no_grad()
def kmeans(x: Tensor, k: int, *, iters: int = 20, seed: int = 0, plus_plus: bool = True,
           init: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Lloyd's k-means. ``x: Tensor[N, e]`` -> ``(centroids Tensor[k, e], assignment LongTensor[N])``.

    Empty clusters keep their previous centroid. Seeded by ``seed`` (CPU generator).
    """
    x = x.detach().float()
    g = torch.Generator().manual_seed(seed)
    if init is not None:
        cent = init.detach().float().clone()
    elif plus_plus:
        cent = kmeans_plus_plus(x.cpu(), k, g).to(x.device)
    else:
        cent = x[torch.randint(x.shape[0], (k,), generator=g).to(x.device)].clone()
    if _dist():
        torch.distributed.broadcast(cent, src=0)
    assign = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for _ in range(iters):
        assign = nearest_centroid(x, cent)
        sums = torch.zeros_like(cent).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        if _dist():
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(counts)
        nonempty = counts > 0
        cent[nonempty] = sums[nonempty] / counts[nonempty, None]
    assign = nearest_centroid(x, cent)
    return cent, assign
