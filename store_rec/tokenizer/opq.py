"""OPQ: learned orthogonal rotation R + product quantization (K subspaces x C codes), trained by
alternating k-means per subspace with an orthogonal Procrustes update of R (SVD), as faiss OPQMatrix.

Data-parallel when ``torch.distributed`` is initialised: k-means sums/counts (see :mod:`kmeans`) and the
Procrustes cross-covariance ``X^T Y`` are all-reduced, so every rank ends with the same R and codebooks.

``encode(x) = argmin per subspace of (x R)``; ``decode(codes) = concat(codewords) R^T``.
If ``d`` is not divisible by ``K``, inputs are zero-padded to ``ceil(d/K)*K`` (``pad=True``, default;
the rotation mixes the padding with real dimensions, decode drops it); ``pad=False`` raises ConfigError.
"""

from __future__ import annotations

import torch
from torch import Tensor

from store_rec.config import ConfigError
from store_rec.tokenizer.base import SemanticTokenizer, check_embeddings, check_fit_size
from store_rec.tokenizer.kmeans import _dist, kmeans


class OPQ(SemanticTokenizer):
    def __init__(self, input_dim: int, num_sids: int = 8, codebook_size: int = 256, *, seed: int = 0, pad: bool = True):
        super().__init__()
        if num_sids <= 0 or codebook_size <= 0:
            raise ConfigError(f"num_sids/codebook_size: must be > 0, got {num_sids}/{codebook_size}")
        if input_dim <= 0:
            raise ConfigError(f"input_dim: must be > 0, got {input_dim}")
        if input_dim % num_sids and not pad:
            raise ConfigError(f"num_sids: embedding dimension {input_dim} is not divisible by num_sids {num_sids}")
        self.input_dim, self.num_sids, self.codebook_size, self.seed = input_dim, num_sids, codebook_size, seed
        self.sub = -(-input_dim // num_sids)
        self.padded_dim = self.sub * num_sids
        self.register_buffer("rotation", torch.eye(self.padded_dim))  # [D, D], orthogonal, D = padded d
        self.register_buffer("codebooks", torch.zeros(num_sids, codebook_size, self.sub))  # [K, C, d/K]

    def _pad(self, x: Tensor) -> Tensor:
        if self.padded_dim == self.input_dim:
            return x
        return torch.nn.functional.pad(x, (0, self.padded_dim - self.input_dim))

    def _pq_encode(self, xr: Tensor) -> Tensor:
        parts = xr.view(xr.shape[0], self.num_sids, self.sub).transpose(0, 1)  # [K, N, s]
        cb = self.codebooks
        d = torch.baddbmm((cb * cb).sum(-1)[:, None, :], parts, cb.transpose(1, 2), alpha=-2.0)
        return d.argmin(-1).t()

    def _pq_decode_rot(self, codes: Tensor) -> Tensor:
        k = torch.arange(self.num_sids, device=codes.device)
        return self.codebooks[k[None, :], codes].reshape(codes.shape[0], -1)

    @torch.no_grad()
    def fit(self, emb: Tensor, *, outer_iters: int = 30, kmeans_iters: int = 10, max_train: int = 200000):
        """Alternate PQ k-means and Procrustes on ``emb: Tensor[N, d]``; returns history
        ``{"mse": [...] per outer iteration}``. Raises UserError when ``C > N`` (see :func:`check_fit_size`)."""
        check_embeddings(emb, self.input_dim)
        n_total = emb.shape[0]
        if _dist():  # data-parallel: C is checked against all shards together
            t = torch.tensor([n_total], device=emb.device)
            torch.distributed.all_reduce(t)
            n_total = int(t)
        check_fit_size(n_total, self.codebook_size, batch_size=emb.shape[0] if _dist() else None, where="OPQ.fit")
        x = self._pad(emb.float())
        if x.shape[0] > max_train:
            g = torch.Generator().manual_seed(self.seed)
            x = x[torch.randperm(x.shape[0], generator=g)[:max_train]]
        hist = {"mse": []}
        for it in range(outer_iters):
            xr = x @ self.rotation
            for k in range(self.num_sids):
                part = xr[:, k * self.sub:(k + 1) * self.sub].contiguous()
                init = self.codebooks[k] if it > 0 else None
                cent, _ = kmeans(part, self.codebook_size, iters=kmeans_iters if it > 0 else 2 * kmeans_iters,
                                 seed=self.seed + k, init=init)
                self.codebooks[k] = cent
            codes = torch.cat([self._pq_encode(xr[i:i + 16384]) for i in range(0, xr.shape[0], 16384)])
            y = self._pq_decode_rot(codes)  # targets in rotated space
            # Procrustes: R = argmin ||x R - y|| over orthogonal R -> U V^T of svd(x^T y)
            m = x.t() @ y
            if _dist():  # the cross-covariance is a sum over items: every rank gets the same rotation
                torch.distributed.all_reduce(m)
            u, _, vh = torch.linalg.svd(m)
            self.rotation.copy_(u @ vh)
            hist["mse"].append(float(((x @ self.rotation - y) ** 2).mean()))
        return hist

    def _encode(self, emb: Tensor) -> Tensor:
        """Unvalidated codes of one batch: ``Tensor[n, d] -> LongTensor[n, K]``."""
        return self._pq_encode(self._pad(emb) @ self.rotation)

    def encode_bytes_per_row(self) -> int:
        return 4 * (2 * self.padded_dim + self.num_sids * self.codebook_size) + 8 * self.num_sids

    def _decode(self, codes: Tensor) -> Tensor:
        """``LongTensor[N, K]`` (validated by :meth:`decode`) -> ``Tensor[N, d]``."""
        return (self._pq_decode_rot(codes) @ self.rotation.t())[:, :self.input_dim]
