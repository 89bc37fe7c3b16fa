"""Vector quantizer shared by OPMQ and RQ-VAE: G independent codebooks of C codewords of width e.

Machinery (what a VQ tokenizer needs in practice: without k-means init and dead-code restarts most codes
of a randomly initialised codebook are never used):

* nearest codeword by ||z||^2 - 2 z c + ||c||^2 (one batched matmul);
* straight-through estimator: ``q_st = z + sg(q - z)`` so d q_st / d z = I;
* codebook updates, ``update="ema"`` (default) — exponential moving averages of assignment counts and
  latent sums (VQ-VAE-2). Default because it needs no codebook learning rate, is robust to the
  scale of the latents, and its statistics are plain sums that can be all-reduced so every DDP rank
  keeps the identical codebook. ``update="loss"``: codebook is a trained parameter with the VQ-VAE
  codebook loss ||sg(z) - q||^2 (its gradients are then averaged by DDP like any parameter).
  Both use the commitment loss ``beta * ||z - sg(q)||^2``;
* k-means init of every codebook from the first training batch (``kmeans_init=True``);
* dead-code restarts: a code unused for ``dead_code_steps`` training steps is replaced by a random
  latent of the current batch (chosen on rank 0 and broadcast).

When ``torch.distributed`` is initialised, EMA counts/sums and usage counts are all-reduced, k-means
init is computed jointly (see :mod:`kmeans`), and restart vectors come from rank 0.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import Tensor, nn

from store_rec.tokenizer.kmeans import _dist, kmeans


class VectorQuantizer(nn.Module):
    """``forward(z: Tensor[N, G, e]) -> (q_st Tensor[N, G, e], codes LongTensor[N, G], losses)``."""

    def __init__(self, num_codebooks: int, codebook_size: int, dim: int, *, update: str = "ema",
                 decay: float = 0.99, eps: float = 1e-5, commitment_weight: float = 0.25,
                 dead_code_steps: int = 100, kmeans_init: bool = True, kmeans_iters: int = 10, seed: int = 0):
        super().__init__()
        if update not in ("ema", "loss"):
            raise ValueError(f"update must be 'ema' or 'loss', got {update!r}")
        self.num_codebooks, self.codebook_size, self.dim = num_codebooks, codebook_size, dim
        self.update, self.decay, self.eps = update, decay, eps
        self.commitment_weight = commitment_weight
        self.dead_code_steps, self.kmeans_init, self.kmeans_iters, self.seed = (
            dead_code_steps, kmeans_init, kmeans_iters, seed)
        g = torch.Generator().manual_seed(seed)
        init = torch.randn(num_codebooks, codebook_size, dim, generator=g)
        self.codebook = nn.Parameter(init, requires_grad=(update == "loss"))  # [G, C, e]
        self.register_buffer("ema_count", torch.ones(num_codebooks, codebook_size))
        self.register_buffer("ema_sum", init.clone())
        self.register_buffer("unused_steps", torch.zeros(num_codebooks, codebook_size, dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(not kmeans_init))

    def nearest(self, z: Tensor) -> Tensor:
        """``z: Tensor[N, G, e]`` -> codes ``LongTensor[N, G]``."""
        cb = self.codebook.detach()
        zt = z.transpose(0, 1)  # [G, N, e]
        d = torch.baddbmm((cb * cb).sum(-1)[:, None, :], zt, cb.transpose(1, 2), alpha=-2.0)  # [G, N, C]
        return d.argmin(-1).t()

    def lookup(self, codes: Tensor) -> Tensor:
        """``codes: LongTensor[N, G]`` -> codewords ``Tensor[N, G, e]``."""
        g = torch.arange(self.num_codebooks, device=codes.device)
        return self.codebook[g[None, :], codes]

    @torch.no_grad()
    def _kmeans_init(self, z: Tensor) -> None:
        for gi in range(self.num_codebooks):
            cent, _ = kmeans(z[:, gi], self.codebook_size, iters=self.kmeans_iters, seed=self.seed + gi)
            self.codebook.data[gi] = cent
            self.ema_sum[gi] = cent
        self.ema_count.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, z: Tensor, codes: Tensor) -> Tensor:
        G, C, e = self.codebook.shape
        onehot_counts = torch.zeros(G, C, device=z.device)
        onehot_counts.scatter_add_(1, codes.t(), torch.ones_like(codes.t(), dtype=onehot_counts.dtype))
        sums = torch.zeros(G, C, e, device=z.device, dtype=z.dtype)
        sums.scatter_add_(1, codes.t()[..., None].expand(G, -1, e), z.transpose(0, 1))
        if _dist():
            torch.distributed.all_reduce(onehot_counts)
            torch.distributed.all_reduce(sums)
        if self.update == "ema":
            self.ema_count.mul_(self.decay).add_(onehot_counts, alpha=1 - self.decay)
            self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            n = self.ema_count.sum(1, keepdim=True)
            smoothed = (self.ema_count + self.eps) / (n + C * self.eps) * n  # Laplace smoothing
            self.codebook.data.copy_(self.ema_sum / smoothed[..., None])
        return onehot_counts

    @torch.no_grad()
    def _restart_dead(self, z: Tensor, counts: Tensor) -> None:
        self.unused_steps.add_(1)
        self.unused_steps[counts > 0] = 0
        if self.dead_code_steps <= 0:
            return
        dead = self.unused_steps >= self.dead_code_steps  # identical on all ranks (counts all-reduced)
        if not bool(dead.any()):
            return
        for gi in range(self.num_codebooks):
            idx = dead[gi].nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            pick = torch.randint(z.shape[0], (idx.numel(),), device=z.device)
            new = z[pick, gi].detach().clone()
            if _dist():
                torch.distributed.broadcast(new, src=0)
            self.codebook.data[gi, idx] = new
            self.ema_sum[gi, idx] = new
            self.ema_count[gi, idx] = 1.0
            self.unused_steps[gi, idx] = 0

    def forward(self, z: Tensor) -> Tuple[Tensor, Tensor, Dict[str, Tensor]]:
        """``z: Tensor[N, G, e]`` -> ``(z + sg(q - z) Tensor[N, G, e], codes LongTensor[N, G], losses)``.

        Training mode also updates the codebook (EMA), k-means-initialises it on the first call and
        restarts dead codes. ``losses``: ``commit`` (weighted) and, for ``update="loss"``, ``codebook``.
        """
        if self.training and not bool(self.initialized):
            self._kmeans_init(z.detach())
        codes = self.nearest(z.detach())
        if self.training:
            counts = self._ema_update(z.detach(), codes)
            self._restart_dead(z.detach(), counts)
        q = self.lookup(codes)
        losses = {"commit": self.commitment_weight * ((z - q.detach()) ** 2).sum(-1).mean()}
        if self.update == "loss":
            losses["codebook"] = ((z.detach() - q) ** 2).sum(-1).mean()
        q_st = z + (q - z).detach()
        return q_st, codes, losses
