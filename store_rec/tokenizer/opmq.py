"""OPMQ: Orthogonal Parallel Multi-expert Quantization (STORE, arXiv 2511.18805).

::

    e: Tensor[N, d] --E_1..E_K (parallel MLP experts)--> z: Tensor[N, K, latent]
      --nearest codeword of codebook k (one per expert; or one shared)--> s: Tensor[N, K, latent]
      --straight-through: z + sg(s - z), summed over k--> Tensor[N, latent] --decoder--> recon Tensor[N, d]

Losses (already weighted, in ``OPMQOutput.losses``): ``recon`` = ||e - recon||^2 summed over dims,
mean over items; ``commit`` (and ``codebook`` for ``codebook_update="loss"``) from the quantizer;
``orth`` = ``orth_weight * ||V V^T - I||_F^2`` where row i of ``V: Tensor[K, P]`` is the L2-normalised
concatenation of all *weight matrices* of expert i (biases excluded: they are not directions of the
expert's projection). The total training loss is ``sum(losses.values())``.

Distributed: see :mod:`store_rec.tokenizer.quantizer` — EMA statistics are all-reduced, k-means init
and dead-code restarts are identical on all ranks, so DDP training keeps identical codebooks.
Unknown items: an id missing from the SID table gets the OOV SID ``C`` (see :mod:`base`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from store_rec.config import ConfigError, check
from store_rec.tokenizer.base import SemanticTokenizer
from store_rec.tokenizer.quantizer import VectorQuantizer


@dataclass
class OPMQConfig:
    """Architecture / VQ settings shared by OPMQ and RQ-VAE (RQ-VAE ignores orth_weight/shared_codebook)."""

    num_sids: int = 3
    codebook_size: int = 256
    hidden_dims: List[int] = field(default_factory=lambda: [128])
    latent_dim: int = 32
    codebook_update: str = "ema"
    commitment_weight: float = 0.25
    orth_weight: float = 0.1
    ema_decay: float = 0.99
    dead_code_steps: int = 100
    kmeans_init: bool = True
    shared_codebook: bool = False

    def __post_init__(self):
        check(self.num_sids > 0, "num_sids", f"must be > 0, got {self.num_sids}")
        check(self.codebook_size > 0, "codebook_size", f"must be > 0, got {self.codebook_size}")
        check(self.latent_dim > 0, "latent_dim", f"must be > 0, got {self.latent_dim}")
        check(all(h > 0 for h in self.hidden_dims), "hidden_dims", "every width must be > 0")
        check(self.codebook_update in ("ema", "loss"), "codebook_update", "must be 'ema' or 'loss'")
        check(self.commitment_weight >= 0, "commitment_weight", "must be >= 0")
        check(self.orth_weight >= 0, "orth_weight", "must be >= 0")
        check(0 < self.ema_decay < 1, "ema_decay", "must be in (0, 1)")
        check(self.dead_code_steps >= 0, "dead_code_steps", "must be >= 0 (0 disables restarts)")


class OPMQOutput(NamedTuple):
    recon: Tensor  # [N, d]
    codes: Tensor  # [N, K]
    z: Tensor  # [N, K, latent] expert outputs
    quantized: Tensor  # [N, K, latent] straight-through quantized latents
    losses: Dict[str, Tensor]


def mlp(dims: Sequence[int]) -> nn.Sequential:
    layers: List[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def orthogonality_error(experts: Sequence[nn.Module]) -> Tensor:
    """``||V V^T - I||_F^2``, V rows = L2-normalised flattened weight matrices of each expert."""
    rows = [torch.cat([p.reshape(-1) for n, p in e.named_parameters() if n.endswith("weight")]) for e in experts]
    v = nn.functional.normalize(torch.stack(rows), dim=1)
    eye = torch.eye(v.shape[0], device=v.device, dtype=v.dtype)
    return ((v @ v.t() - eye) ** 2).sum()


class OPMQ(SemanticTokenizer):
    """``forward(emb: Tensor[N, d]) -> OPMQOutput``; ``encode``: ``Tensor[N, d] -> LongTensor[N, K]``."""

    def __init__(self, input_dim: int, num_sids: int = 3, codebook_size: int = 256, *,
                 config: OPMQConfig = None, seed: int = 0, **overrides):
        super().__init__()
        cfg = config or OPMQConfig(num_sids=num_sids, codebook_size=codebook_size, **overrides)
        if config is not None and overrides:
            raise ConfigError(f"pass either config or keyword overrides, not both: {sorted(overrides)}")
        if input_dim <= 0:
            raise ConfigError(f"input_dim: must be > 0, got {input_dim}")
        self.cfg = cfg
        self.input_dim, self.num_sids, self.codebook_size = input_dim, cfg.num_sids, cfg.codebook_size
        self.latent_dim, self.orth_weight = cfg.latent_dim, cfg.orth_weight
        torch.manual_seed(seed)
        dims = [input_dim, *cfg.hidden_dims, cfg.latent_dim]
        self.experts = nn.ModuleList(mlp(dims) for _ in range(cfg.num_sids))
        self.decoder = mlp(dims[::-1])
        self.shared_codebook = cfg.shared_codebook
        self.quantizer = VectorQuantizer(
            1 if cfg.shared_codebook else cfg.num_sids, cfg.codebook_size, cfg.latent_dim,
            update=cfg.codebook_update, decay=cfg.ema_decay, commitment_weight=cfg.commitment_weight,
            dead_code_steps=cfg.dead_code_steps, kmeans_init=cfg.kmeans_init, seed=seed)

    def experts_forward(self, emb: Tensor) -> Tensor:
        """``Tensor[N, d] -> z: Tensor[N, K, latent]``."""
        return torch.stack([e(emb) for e in self.experts], dim=1)

    def fused_expert_weights(self) -> List[Tuple[Tensor, Tensor]]:
        """The K experts' layers stacked for batched evaluation (detached; rebuilt on every call, so
        fine-tuned weights are always current).

        Returns ``[(W_0 Tensor[d, K*h_0], b_0 Tensor[K*h_0]), (W_1 Tensor[K, h_0, h_1], b_1 Tensor[K, h_1]),
        ...]``: layer 0 of all experts is one ``emb @ W_0`` (expert k owns columns ``k*h_0 .. (k+1)*h_0``),
        deeper layers are per-expert ``[h_{j-1}, h_j]`` matrices.
        """
        layers = [[m for m in e if isinstance(m, nn.Linear)] for e in self.experts]
        out = [(torch.cat([ls[0].weight for ls in layers], 0).detach().t(),
                torch.cat([ls[0].bias for ls in layers], 0).detach())]
        for j in range(1, len(layers[0])):
            out.append((torch.stack([ls[j].weight.detach().t() for ls in layers]),
                        torch.stack([ls[j].bias.detach() for ls in layers])))
        return out

    def experts_forward_fused(self, emb: Tensor) -> Tensor:
        """Same as :meth:`experts_forward` (to float rounding) with layer 0 of all experts as one matmul
        and deeper layers as one matmul per expert. ``Tensor[N, d] -> Tensor[N, K, latent]``."""
        return self._latents_kn(emb, self.fused_expert_weights()).transpose(0, 1)

    def _latents_kn(self, emb: Tensor, weights: List[Tuple[Tensor, Tensor]],
                    bufs: Optional[List[Tensor]] = None) -> Tensor:
        """Expert latents in expert-major layout ``Tensor[K, n, latent]`` (a view for linear experts).

        ``bufs`` (optional, from :meth:`_encode_buffers`) are reused output buffers: no allocation per batch.
        """
        n, k = emb.shape[0], self.num_sids
        w0, b0 = weights[0]
        h = torch.addmm(b0, emb, w0, out=bufs[0][:n] if bufs else None)  # [n, K*h_0]
        if len(weights) == 1:
            return h.view(n, k, -1).transpose(0, 1)
        h.relu_()
        prev = [h[:, i * w0.shape[1] // k:(i + 1) * w0.shape[1] // k] for i in range(k)]  # [n, h_0] each
        for j, (w, b) in enumerate(weights[1:], start=1):
            z = bufs[j][:, :n] if bufs else emb.new_empty(k, n, w.shape[2])
            for i in range(k):
                torch.addmm(b[i], prev[i], w[i], out=z[i])
            if j < len(weights) - 1:
                z.relu_()
            prev = list(z)
        return z

    def _encode_buffers(self, rows: int, weights: List[Tuple[Tensor, Tensor]], device) -> List[Tensor]:
        """Reusable buffers for :meth:`_encode_into`: layer outputs, distances ``[G, rows*K/G, C]`` and codes."""
        k = self.num_sids
        bufs = [torch.empty(rows, weights[0][0].shape[1], device=device)]
        bufs += [torch.empty(k, rows, w.shape[2], device=device) for w, _ in weights[1:]]
        bufs.append(torch.empty(k, rows, self.codebook_size, device=device))
        bufs.append(torch.empty(k, rows, dtype=torch.long, device=device))
        return bufs

    def _encode_into(self, emb: Tensor, out: Tensor, weights: List[Tuple[Tensor, Tensor]],
                     bufs: Optional[List[Tensor]] = None) -> None:
        """Codes of ``emb: Tensor[n, d]`` written into ``out: LongTensor[n, K]``.

        Nearest codeword per expert by ``||c||^2 - 2 z.c`` (``||z||^2`` is constant per row), one
        ``[n, latent] @ [latent, C]`` matmul per expert, argmin over C.
        """
        n, k = emb.shape[0], self.num_sids
        z = self._latents_kn(emb, weights, bufs)  # [K, n, e]
        cb = self.quantizer.codebook.detach()  # [G, C, e]
        cbt = cb.transpose(1, 2)
        cnorm = (cb * cb).sum(-1)  # [G, C]
        dist = bufs[-2][:, :n] if bufs else emb.new_empty(k, n, self.codebook_size)
        for i in range(k):
            g = 0 if self.shared_codebook else i
            torch.addmm(cnorm[g], z[i], cbt[g], alpha=-2.0, out=dist[i])
        codes = bufs[-1][:, :n] if bufs else None
        codes = torch.argmin(dist, -1, out=codes) if codes is not None else dist.argmin(-1)
        out.copy_(codes.t())

    def encode_bytes_per_row(self) -> int:
        widths = [self.num_sids * w for w in (*self.cfg.hidden_dims, self.latent_dim)]
        return 4 * (sum(widths) + self.num_sids * self.codebook_size) + 8 * self.num_sids

    def _encode_batches(self, emb: Tensor, out: Tensor, batch_size: int) -> None:
        weights = self.fused_expert_weights()
        bufs = self._encode_buffers(min(batch_size, emb.shape[0]), weights, emb.device)
        for i in range(0, emb.shape[0], batch_size):
            x = self._check_batch(emb, i, batch_size)
            self._encode_into(x, out[i:i + x.shape[0]], weights, bufs)

    def _quantize(self, z: Tensor):
        if self.shared_codebook:
            n, k, e = z.shape
            q, codes, losses = self.quantizer(z.reshape(n * k, 1, e))
            return q.reshape(n, k, e), codes.reshape(n, k), losses
        return self.quantizer(z)

    def orthogonality_error(self) -> Tensor:
        return orthogonality_error(self.experts)

    def forward(self, emb: Tensor) -> OPMQOutput:
        z = self.experts_forward(emb)
        q, codes, losses = self._quantize(z)
        recon = self.decoder(q.sum(1))
        losses = dict(losses)
        losses["recon"] = ((recon - emb) ** 2).sum(-1).mean()
        if self.orth_weight > 0 and self.num_sids > 1:
            losses["orth"] = self.orth_weight * self.orthogonality_error()
        return OPMQOutput(recon, codes, z, q, losses)

    def _encode(self, emb: Tensor) -> Tensor:
        """Unvalidated codes of one batch ``Tensor[n, d] -> LongTensor[n, K]`` (also used by the online
        tokenizer on pooled EBC outputs)."""
        out = torch.empty(emb.shape[0], self.num_sids, dtype=torch.long, device=emb.device)
        if emb.shape[0]:
            self._encode_into(emb, out, self.fused_expert_weights())
        return out

    def _decode(self, codes: Tensor) -> Tensor:
        """``LongTensor[N, K]`` (validated by :meth:`decode`) -> ``Tensor[N, d]``."""
        if self.shared_codebook:
            q = self.quantizer.codebook[0][codes]
        else:
            q = self.quantizer.lookup(codes)
        return self.decoder(q.sum(1))
